"""The worker's configuration: one frozen record, and the one loader that reads it from the
environment and the command line.

The environment is read here and nowhere else: :func:`load_config` takes the command line's
options and a mapping of the environment's variables (``python -m pyworker`` passes
``os.environ`` once), and backends get the same mapping through
:func:`pyworker.load_backend`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, overload
from urllib.parse import urlsplit

import attrs


class ConfigError(ValueError):
    """The configuration is impossible; the message says why in one line."""


@overload
def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 1) -> int: ...
@overload
def env_int(
    env: Mapping[str, str], name: str, default: None = None, *, minimum: int = 1
) -> int | None: ...
def env_int(
    env: Mapping[str, str], name: str, default: int | None = None, *, minimum: int = 1
) -> int | None:
    """The integer in the environment variable ``name``, or ``default`` when it is unset or
    blank: for a backend's settings, read from the mapping its factory is given.

    Raises:
        ConfigError: the value is not an integer of at least ``minimum`` (a typo in a
            template's environment stops the worker with its name, rather than running with
            a default the operator did not ask for).
    """
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ConfigError(f"{name} must be an integer of at least {minimum}, not {text!r}")
    return value


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def default_state_dir(env: Mapping[str, str]) -> Path:
    """Where the worker keeps its benchmark cache and demo files."""
    if value := env.get("PYWORKER_STATE_DIR"):
        return Path(value)
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pyworker"


def _split_addrs(value: str) -> tuple[str, ...]:
    addrs = tuple(a.strip().rstrip("/") for a in value.split(",") if a.strip())
    for addr in addrs:
        parts = urlsplit(addr)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ConfigError(f"REPORT_ADDR entry {addr!r} is not an http(s) URL")
    return addrs


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{attribute.name.replace('_', '-')} must be positive, not {value}")


def _at_least_one(_: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{attribute.name.replace('_', '-')} must be at least 1, not {value}")


def _port(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ConfigError(f"port {value} is out of range (0 to 65535)")


@attrs.frozen(kw_only=True)
class WorkerConfig:
    """Everything the worker needs to run.

    Build it with :meth:`from_env` (the Vast template's variables) and override fields with
    :func:`attrs.evolve`.
    """

    backend: str
    host: str = "0.0.0.0"
    port: int = attrs.field(default=3000, validator=_port)
    public_url: str = ""
    """This worker's URL as clients see it (signed by the router); derived when empty."""
    use_ssl: bool = False
    ssl_certfile: str = "/etc/instance.crt"
    ssl_keyfile: str = "/etc/instance.key"
    report_addrs: tuple[str, ...] = ()
    container_id: int = 0
    model_log: Path | None = None
    model_server_url: str = ""
    """Empty: the backend's default."""
    unsecured: bool = False
    accept_2025_signatures: bool = True
    pubkey_url: str = ""
    """Where to fetch the router's key; empty: ``{REPORT_ADDR}/pubkey/``."""
    pubkey_file: str = ""
    pubkey_pem: str = ""
    max_body_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=_at_least_one)
    body_timeout: float = attrs.field(default=30.0, validator=_positive)
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    read_timeout: float = attrs.field(default=600.0, validator=_positive)
    """Seconds of silence from the model server between two bytes of an answer's body."""
    first_byte_timeout: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(_positive)
    )
    """Seconds from sending a request to the model server to its answer's complete head (a
    non-streamed answer's head comes with the whole answer); None: ``read_timeout``."""
    total_timeout: float = attrs.field(default=3600.0, validator=attrs.validators.ge(0))
    """Seconds a request may take at the model server in all, answer included (0: no limit)."""
    max_queue_time: float = 30.0
    drain_timeout: float = attrs.field(default=30.0, validator=_positive)
    health_interval: float = attrs.field(default=10.0, validator=_positive)
    health_timeout: float = attrs.field(default=10.0, validator=_positive)
    health_failures: int = 3
    load_timeout: float = attrs.field(default=7200.0, validator=_positive)
    """Seconds a load may take (from start, or a new log) before the worker gives up on it."""
    probe_interval: float = attrs.field(default=10.0, validator=_positive)
    """Seconds before the first probe request of a model server that is loading or errored
    (then doubling, up to 5 min)."""
    stall_timeout: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    """The least silence from the model server, with requests waiting on it, that is a stall
    (longer when their predicted service time says so; 0: no watchdog)."""
    state_dir: Path = attrs.field(factory=lambda: default_state_dir({}))
    force_benchmark: bool = False
    benchmark_runs: int | None = attrs.field(default=None, validator=_at_least_one)
    disk_path: str = "/"
    mtoken: str = ""
    """``MASTER_TOKEN``: sent in reports, and authorises ``POST /pyworker/update``."""
    report_format: str = attrs.field(
        default="2026", validator=attrs.validators.in_(("2026", "2024"))
    )
    """Which generation's meanings the reports carry (see the README's table)."""
    max_sessions: int = attrs.field(default=10, validator=attrs.validators.ge(0))
    """Open sessions at most (0: no limit)."""
    http_port: int | None = attrs.field(default=None, validator=attrs.validators.optional(_port))
    """The internal plain-HTTP listener (``/session/end`` only); None: ``port + 1`` (any free
    port when ``port`` is 0)."""
    keep_alive_timeout: float = attrs.field(default=5.0, validator=_positive)
    """Seconds an idle client connection (or one whose request head has not arrived) is kept."""
    max_connections: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(1))
    )
    """Client connections open at once at most (more get a 503); None: half the process's
    descriptor limit."""
    update_flag_file: str = "/.force_update"
    metrics_port: int | None = attrs.field(default=None, validator=attrs.validators.optional(_port))
    """Serve ``GET /metrics`` on this port (plain HTTP) instead of the public one."""
    """What ``POST /pyworker/update`` creates for the start script to act on."""

    @classmethod
    def from_env(cls, backend: str, env: Mapping[str, str]) -> WorkerConfig:
        """The configuration a Vast template gives, from its environment variables.

        Raises:
            ConfigError: a variable is malformed.
        """
        try:
            port = int(env.get("WORKER_PORT", "3000"))
            container_id = int(env.get("CONTAINER_ID", "0") or 0)
            http_port = int(env["WORKER_HTTP_PORT"]) if env.get("WORKER_HTTP_PORT") else None
        except ValueError as exc:
            raise ConfigError(
                f"WORKER_PORT, WORKER_HTTP_PORT and CONTAINER_ID must be integers ({exc})"
            ) from None
        use_ssl = _truthy(env.get("USE_SSL"))
        public_url = ""
        if ip := env.get("PUBLIC_IPADDR"):
            public_port = env.get(f"VAST_TCP_PORT_{port}", str(port))
            public_url = f"{'https' if use_ssl else 'http'}://{ip}:{public_port}"
        model_log = env.get("MODEL_LOG")
        return cls(
            backend=backend,
            port=port,
            public_url=public_url,
            use_ssl=use_ssl,
            report_addrs=_split_addrs(env.get("REPORT_ADDR", "")),
            container_id=container_id,
            model_log=Path(model_log) if model_log else None,
            model_server_url=env.get("MODEL_SERVER_URL", ""),
            unsecured=_truthy(env.get("UNSECURED")),
            pubkey_url=env.get("PYWORKER_PUBKEY_URL", ""),
            pubkey_file=env.get("PYWORKER_PUBKEY_FILE", ""),
            pubkey_pem=env.get("PYWORKER_PUBKEY", ""),
            mtoken=env.get("MASTER_TOKEN", ""),
            state_dir=default_state_dir(env),
            http_port=http_port,
        )

    @property
    def internal_port(self) -> int:
        """The internal listener's port (0: any free one)."""
        if self.http_port is not None:
            return self.http_port
        return self.port + 1 if self.port else 0

    @property
    def url(self) -> str:
        """The public URL, or the local one when no public address is known."""
        if self.public_url:
            return self.public_url
        host = "127.0.0.1" if self.host in {"0.0.0.0", ""} else self.host
        return f"{'https' if self.use_ssl else 'http'}://{host}:{self.port}"

    def check(self) -> None:
        """Raise :class:`ConfigError` for a configuration that cannot work."""
        if self.model_log is None:
            raise ConfigError(
                "no model log: set MODEL_LOG (or --model-log) to the model "
                "server's log file, or use --demo"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range")
        if self.use_ssl:
            for path in (self.ssl_certfile, self.ssl_keyfile):
                if not Path(path).is_file():
                    raise ConfigError(f"USE_SSL is set but {path} does not exist")
        if self.pubkey_file and not Path(self.pubkey_file).is_file():
            raise ConfigError(f"public key file {self.pubkey_file} does not exist")
        if not (self.unsecured or self.public_url):
            raise ConfigError(
                "no public URL: the router signs the URL clients reach this worker at, so set "
                "PUBLIC_IPADDR (and VAST_TCP_PORT_<port>) or --public-url, or UNSECURED=true for "
                "local testing"
            )
        if not (
            self.unsecured
            or self.report_addrs
            or self.pubkey_url
            or self.pubkey_file
            or self.pubkey_pem
        ):
            raise ConfigError(
                "no way to get the router's public key: set REPORT_ADDR, "
                "a --pubkey-* option, or UNSECURED=true for local testing"
            )


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"", "0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


_VAST_VARIABLES = ("MODEL_LOG", "REPORT_ADDR")
"""Set on a Vast instance: without any of them, ``python -m pyworker`` runs the local demo."""

# Options whose environment variable is pyworker's own (the Vast ones are read by
# WorkerConfig.from_env): read when the option is not given on the command line.
ENV_OPTIONS: dict[str, tuple[str, Callable[[str], object]]] = {
    "demo": ("PYWORKER_DEMO", _flag),
    "public_url": ("PYWORKER_PUBLIC_URL", str),
    "only_2024_signatures": ("PYWORKER_ONLY_2024_SIGNATURES", _flag),
    "max_queue_time": ("PYWORKER_MAX_QUEUE_TIME", float),
    "max_body_bytes": ("PYWORKER_MAX_BODY_BYTES", int),
    "read_timeout": ("PYWORKER_READ_TIMEOUT", float),
    "connect_timeout": ("PYWORKER_CONNECT_TIMEOUT", float),
    "first_byte_timeout": ("PYWORKER_FIRST_BYTE_TIMEOUT", float),
    "total_timeout": ("PYWORKER_TOTAL_TIMEOUT", float),
    "drain_timeout": ("PYWORKER_DRAIN_TIMEOUT", float),
    "health_interval": ("PYWORKER_HEALTH_INTERVAL", float),
    "force_benchmark": ("PYWORKER_FORCE_BENCHMARK", _flag),
    "benchmark_runs": ("PYWORKER_BENCHMARK_RUNS", int),
    "report_format": ("PYWORKER_REPORT_FORMAT", str),
    "load_timeout": ("PYWORKER_LOAD_TIMEOUT", float),
    "stall_timeout": ("PYWORKER_STALL_TIMEOUT", float),
    "max_sessions": ("PYWORKER_MAX_SESSIONS", int),
    "update_flag_file": ("PYWORKER_UPDATE_FLAG_FILE", str),
    # The start script makes the certificate; a test (or an image that keeps it elsewhere)
    # points both the script and the worker at other paths through these.
    "ssl_certfile": ("PYWORKER_SSL_CERTFILE", str),
    "ssl_keyfile": ("PYWORKER_SSL_KEYFILE", str),
    "max_connections": ("PYWORKER_MAX_CONNECTIONS", int),
    "keep_alive_timeout": ("PYWORKER_KEEP_ALIVE_TIMEOUT", float),
    "metrics_port": ("PYWORKER_METRICS_PORT", int),
    "access_log": ("PYWORKER_ACCESS_LOG", _flag),
}


def apply_env_options(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """Fill options not given on the command line from their environment variables.

    Raises:
        ConfigError: a variable's value is malformed.
    """
    for dest, (variable, parse) in ENV_OPTIONS.items():
        if getattr(args, dest) in (None, False) and env.get(variable, "") != "":
            try:
                setattr(args, dest, parse(env[variable]))
            except ValueError as exc:
                raise ConfigError(f"{variable}: {exc}") from None


_INSTANCE_HINTS = ("WORKER_PORT", "PUBLIC_IPADDR", "CONTAINER_ID", "USE_SSL", "MASTER_TOKEN")
"""Variables a Vast instance sets: with one of them but no MODEL_LOG, the template is likely
incomplete, and the demo is probably not what was meant."""


def demo_reason(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """Why the local demo runs instead of a worker for a real model server, in one line."""
    if args.demo:
        return "running the local demo (--demo)"
    line = (
        "no MODEL_LOG or REPORT_ADDR (nor --model-log, --report-addr): running the local demo, "
        "with its own model server and a stand-in autoscaler"
    )
    present = [name for name in _INSTANCE_HINTS if env.get(name)]
    if present:
        line += (
            f". {', '.join(present)} {'is' if len(present) == 1 else 'are'} set, as on a Vast "
            "instance: set MODEL_LOG (the model server's log) and REPORT_ADDR to serve the "
            "real model server"
        )
    return line


def load_config(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[WorkerConfig, bool]:
    """The configuration from the command line's options and the environment, and whether to
    run the local demo. An option given on the command line wins over its variable.

    Raises:
        ConfigError: a malformed variable, or an impossible configuration.
    """
    apply_env_options(args, env)
    if args.port is None and env.get("WORKER_PORT"):
        try:
            args.port = int(env["WORKER_PORT"])
        except ValueError:
            raise ConfigError(
                f"WORKER_PORT must be an integer, not {env['WORKER_PORT']!r}"
            ) from None
    if not args.backend:
        raise ConfigError("no backend: pass --backend NAME (or set BACKEND)")
    demo = bool(args.demo) or not (
        any(env.get(v) for v in _VAST_VARIABLES) or args.model_log or args.report_addr
    )
    config = WorkerConfig.from_env(args.backend, env)
    changes: dict[str, Any] = {}
    if args.host is not None:
        changes["host"] = args.host
    if args.port is not None:
        changes["port"] = args.port
    if args.model_log is not None:
        changes["model_log"] = Path(args.model_log)
    if args.model_server_url is not None:
        changes["model_server_url"] = args.model_server_url
    if args.report_addr is not None:
        changes["report_addrs"] = WorkerConfig.from_env(
            args.backend, {"REPORT_ADDR": args.report_addr}
        ).report_addrs
    if args.container_id is not None:
        changes["container_id"] = args.container_id
    if args.public_url is not None:
        changes["public_url"] = args.public_url.rstrip("/")
    if args.unsecured:
        changes["unsecured"] = True
    if args.pubkey_url is not None:
        changes["pubkey_url"] = args.pubkey_url
    if args.pubkey_file is not None:
        changes["pubkey_file"] = args.pubkey_file
    if args.only_2024_signatures:
        changes["accept_2025_signatures"] = False
    for name in (
        "max_queue_time",
        "max_body_bytes",
        "read_timeout",
        "connect_timeout",
        "first_byte_timeout",
        "total_timeout",
        "drain_timeout",
        "health_interval",
        "benchmark_runs",
        "report_format",
        "load_timeout",
        "stall_timeout",
        "max_sessions",
        "http_port",
        "update_flag_file",
        "ssl_certfile",
        "ssl_keyfile",
        "max_connections",
        "keep_alive_timeout",
        "metrics_port",
    ):
        if (value := getattr(args, name)) is not None:
            changes[name] = value
    if args.force_benchmark:
        changes["force_benchmark"] = True
    if args.state_dir is not None:
        changes["state_dir"] = Path(args.state_dir)
    config = attrs.evolve(config, **changes)
    if demo:
        # The demo wires the model log, reports and key itself.
        config = attrs.evolve(config, host="127.0.0.1", report_addrs=(), model_log=None)
    else:
        config.check()
    return config, demo

"""What a load report carries on the wire, field by field and per format, as the tests expect it
(vast-2026.md §8, vast-protocol.md)."""

from __future__ import annotations

from pyworker._report import ReportFormat

V2026, V2024 = ReportFormat.V2026, ReportFormat.V2024

COMMON_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": int,
    "url": str,
    "loadtime": float,
    "max_perf": float,
    "cur_perf": float,
    "cur_load": float,
    "error_msg": str,
    "num_requests_working": int,
    "num_requests_recieved": int,
    "additional_disk_usage": float,
    "cur_capacity": int,
    "max_capacity": int,
    "new_load": float,
    "rej_load": float,
    "working_request_idxs": list,
    "version": str,
    "mtoken": str,
    "state": str,
}
WIRE_FIELDS = {V2026: COMMON_FIELDS | {"disk_usage": float}, V2024: COMMON_FIELDS}

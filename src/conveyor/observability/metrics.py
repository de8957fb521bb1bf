"""Prometheus metrics shared by the API and the workers."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

JOBS_RUN = Counter("conveyor_jobs_run_total", "Job runs finished by this process", ["kind"])
JOBS_SUBMITTED = Counter("conveyor_jobs_submitted_total", "Jobs created", ["kind"])
INGEST_BYTES = Counter("conveyor_ingest_bytes_total", "Bytes written to the archive by ingest")
INGEST_FILES = Counter("conveyor_ingest_files_total", "Files written to the archive by ingest")
TRANSACTIONS = Counter("conveyor_transactions_total", "Transactions created", ["origin"])
HTTP_REQUESTS = Histogram(
    "conveyor_http_request_seconds",
    "HTTP request durations",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
CARTS_FINISHED = Counter("conveyor_carts_finished_total", "Cart outcomes", ["mode", "status"])
CART_BUNDLE_BYTES = Counter(
    "conveyor_cart_bundle_bytes_total", "Bytes of built bundles written to the bundle store"
)
CART_NOTIFICATIONS = Counter(
    "conveyor_cart_notifications_total", "Requester notifications sent", ["kind", "outcome"]
)
MIRROR_DOWNLOADS = Counter(
    "conveyor_mirror_downloads_total", "Files a mirror run downloaded", ["mirror", "host"]
)
MIRROR_DOWNLOAD_ERRORS = Counter(
    "conveyor_mirror_download_errors_total",
    "Files a mirror run failed to download",
    ["mirror", "host"],
)
MIRROR_DOWNLOAD_BYTES = Counter(
    "conveyor_mirror_download_bytes_total",
    "Bytes of files downloaded by mirror runs",
    ["mirror", "host"],
)
MIRROR_DOWNLOAD_SECONDS = Counter(
    "conveyor_mirror_download_seconds_total", "Seconds spent downloading files", ["mirror", "host"]
)
MIRROR_REUSED = Counter(
    "conveyor_mirror_reused_total", "Files a mirror run took from an earlier release", ["mirror"]
)
# The BioMAJ download service's own counters, under its names, for its dashboards.
BIOMAJ_DOWNLOADS = Counter("biomaj_download_total", "Bank total download.", ["bank"])
BIOMAJ_DOWNLOAD_ERRORS = Counter("biomaj_download_errors", "Bank total download errors.", ["bank"])
BIOMAJ_FILE_SIZE = Counter(
    "biomaj_download_file_size", "Bank download file size in bytes.", ["bank", "host"]
)
BIOMAJ_FILE_TIME = Counter(
    "biomaj_download_file_time", "Bank download file time in seconds.", ["bank", "host"]
)
EVENTS_PUBLISHED = Counter(
    "conveyor_events_published_total", "Outbox events matched against the subscriptions"
)
DELIVERIES = Counter(
    "conveyor_deliveries_total", "Event delivery attempts by target kind", ["kind", "outcome"]
)
DELIVERY_LATENCY = Histogram(
    "conveyor_delivery_latency_seconds",
    "From an event's commit to its delivery",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600, 3600),
)

"""Consumers end to end: a real ``conveyor serve`` installs consumer.zip packages, runs them
on new transactions, publishes what they make with provenance, and refuses loops.

One server and one consumer folder serve the whole module, so each distinct package's
virtualenv is built once. Every consumer is named after its test and (except the
published example, which must run unchanged) filters on a project of its test's own.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.client.api import ConveyorClient
from conveyor.client.bundler import BundleFile, BundleStream, metadata_fields
from tests.support.consumers import make_zip
from tests.support.server import running_server, wait_job
from tests.support.waiting import eventually

SEED = Path(__file__).parents[1] / "support" / "seed_consumer"
SEED_FILES = ("__main__.py", "init.sh", "jsonpath2.txt", "requirements.txt")
SETUP_SECONDS = 240.0
WAIT_SECONDS = 90.0
ZIP = {"Content-Type": "application/zip"}


# Copies every input file to the same place under DST/uploads (the runner publishes them).
COPY = (
    "import shutil, sys\n"
    "from pathlib import Path\n"
    "shutil.copytree(Path(sys.argv[1]) / 'downloads', Path(sys.argv[2]) / 'uploads',\n"
    "                dirs_exist_ok=True)\n"
)
# Writes two files of its own, one in folders it makes, and never calls upload().
WRITER = (
    "import sys\n"
    "from pathlib import Path\n"
    "uploads = Path(sys.argv[2]) / 'uploads'\n"
    "(uploads / 'deep' / 'er').mkdir(parents=True, exist_ok=True)\n"
    "(uploads / 'deep' / 'er' / 'out.csv').write_bytes(b'x,y\\n1,2\\n')\n"
    "(uploads / 'note.txt').write_bytes(b'made by the writer\\n')\n"
)
QUIET = "print('looked, wrote nothing')\n"
# Publishes through the ingest API itself, with its run's token and forged provenance (a
# lineage that would make its output look like original data), and waits for the job.
DIRECT = """import io, json, os, sys, tarfile, time, urllib.request
from pathlib import Path

event = json.loads((Path(sys.argv[1]) / "notification.json").read_text())
project = next(
    entry["value"] for entry in event["data"]
    if entry.get("destinationTable") == "Transactions.project"
)
data = b"made directly\\n"
metadata = [
    {"destinationTable": "Transactions.project", "value": project},
    {"destinationTable": "Files", "name": "direct.txt", "subdir": "", "size": len(data)},
    {"destinationTable": "TransactionKeyValue", "key": "conveyor.lineage", "value": "[]"},
    {"destinationTable": "TransactionKeyValue", "key": "conveyor.consumer", "value": "other"},
]
bundle = io.BytesIO()
with tarfile.open(fileobj=bundle, mode="w") as tar:
    for name, body in (("metadata.txt", json.dumps(metadata).encode()), ("data/direct.txt", data)):
        info = tarfile.TarInfo(name)
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))


def call(method, path, body=None):
    request = urllib.request.Request(
        os.environ["CONVEYOR_URL"] + path,
        data=body,
        method=method,
        headers={"Authorization": "Bearer " + os.environ["CONVEYOR_TOKEN"]},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.load(answer)


job = call("POST", "/api/v1/ingest", bundle.getvalue())
while not job["complete"]:
    time.sleep(0.1)
    job = call("GET", f"/api/v1/jobs/{job['id']}")
assert job["state"] == "succeeded", job
"""
# The module server's limits on a run's largest file and on what it may publish in all.
FILE_LIMIT = 1024 * 1024
UPLOADS_LIMIT = 2 * 1024 * 1024
# Given big.txt, writes one file past the file limit; otherwise three that each fit but
# together pass the uploads limit.
GREEDY = f"""import sys
from pathlib import Path

src, uploads = Path(sys.argv[1]), Path(sys.argv[2]) / "uploads"
if (src / "downloads" / "big.txt").exists():
    (uploads / "big.bin").write_bytes(b"x" * {FILE_LIMIT + 1})
else:
    for name in ("a.bin", "b.bin", "c.bin"):
        (uploads / name).write_bytes(b"x" * {FILE_LIMIT - 1})
"""
FAILING = (
    "import sys\n"
    "print('about to fail', flush=True)\n"
    "sys.stderr.write('consumer says: the frobnicator is broken\\n')\n"
    "sys.exit(3)\n"
)


def project_filter(project: str) -> str:
    """A jsonpath2 filter matching new transactions of ``project`` only."""
    return (
        '$[?(@["eventType"] = "org.pacifica.metadata.ingest")]["data"][*]'
        f'[?((@["destinationTable"] = "Transactions.project") and (@["value"] = "{project}"))]'
    )


def script_zip(directory: Path, name: str, code: str, project: str) -> bytes:
    """A consumer.zip of ``code`` filtering on ``project`` (same inputs, same bytes)."""
    path = make_zip(
        directory / f"{name}.zip",
        {"__main__.py": code.encode(), "jsonpath2.txt": project_filter(project).encode()},
    )
    return path.read_bytes()


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def consumer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Installed consumers and their venvs, shared by every server of the module."""
    return tmp_path_factory.mktemp("consumer-home")


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory, consumer_dir: Path) -> Iterator[str]:
    """One running server for the module (auth none: every caller is an admin)."""
    with running_server(
        tmp_path_factory.mktemp("server"),
        consumer_dir=str(consumer_dir),
        consumer_file_bytes=str(FILE_LIMIT),
        consumer_uploads_bytes=str(UPLOADS_LIMIT),
    ) as running:
        yield running


@pytest.fixture(scope="module")
def http(url: str) -> Iterator[httpx.Client]:
    """A client of the module's server."""
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client


class Consumers:
    """Installs consumers for one test and removes them all when it ends."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.names: list[str] = []

    def install(self, name: str, package: bytes, **options: Any) -> dict[str, Any]:
        """POST the package; the 202 answer (the view plus the setup job's id)."""
        params = {"name": name, **{key: str(value).lower() for key, value in options.items()}}
        answer = self.http.post("/api/v1/consumers", params=params, content=package, headers=ZIP)
        assert answer.status_code == 202, answer.text
        self.names.append(name)
        return answer.json()  # type: ignore[no-any-return]

    def ready(self, name: str, package: bytes, **options: Any) -> dict[str, Any]:
        """Install and wait for the setup job; the consumer's view, ready."""
        added = self.install(name, package, **options)
        assert added["state"] == "installing"
        assert added["setup_job_id"] == added["job_id"]
        job = wait_job(str(self.http.base_url), added["job_id"], timeout=SETUP_SECONDS)
        view = self.http.get(f"/api/v1/consumers/{name}").json()
        assert job["state"] == "succeeded", (job, view)
        assert job["kind"] == "consumer.setup"
        assert view["state"] == "ready", view
        assert view["subscription_id"], view
        return view  # type: ignore[no-any-return]

    def remove_all(self) -> None:
        for name in self.names:
            answer = self.http.delete(f"/api/v1/consumers/{name}")
            assert answer.status_code in (204, 404), answer.text


@pytest.fixture
def consumers(http: httpx.Client) -> Iterator[Consumers]:
    """The test's consumers, removed afterwards so no later upload reaches them."""
    made = Consumers(http)
    try:
        yield made
    finally:
        made.remove_all()


# -- reading the server ----------------------------------------------------------------------


def upload(url: str, folder: Path, files: dict[str, bytes], project: str, instrument: str) -> int:
    """Upload ``files`` (bundle path to bytes) as one bundle; the new transaction's id."""
    bundled = []
    for relative, data in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        bundled.append(BundleFile(path, relative, len(data), int(path.stat().st_mtime)))
    stream = BundleStream(bundled, metadata_fields(project, instrument, [], None))
    with ConveyorClient(url) as client:
        job = client.upload(stream.chunks(), stream.length())
        done = client.wait(int(job["id"]), timeout=WAIT_SECONDS)
    assert done["state"] == "succeeded", done
    return int(done["transaction_id"])


def transaction(http: httpx.Client, transaction_id: int) -> dict[str, Any]:
    answer = http.get(f"/api/v1/transactions/{transaction_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def key_values(record: dict[str, Any]) -> dict[str, str]:
    return {pair["key"]: pair["value"] for pair in record["key_values"]}


def file_paths(record: dict[str, Any]) -> list[str]:
    return sorted(f"{item['subdir']}/{item['name']}".lstrip("/") for item in record["files"])


def content(http: httpx.Client, record: dict[str, Any], path: str) -> bytes:
    """The bytes of the file at ``path`` (subdir/name) of a transaction."""
    for item in record["files"]:
        if f"{item['subdir']}/{item['name']}".lstrip("/") == path:
            answer = http.get(f"/api/v1/files/{item['id']}/content")
            assert answer.status_code == 200, answer.text
            return answer.content
    pytest.fail(f"no {path} in transaction {record['id']}: {file_paths(record)}")


def deliveries(http: httpx.Client, subscription_id: str) -> list[dict[str, Any]]:
    answer = http.get("/api/v1/deliveries", params={"subscription": subscription_id})
    assert answer.status_code == 200, answer.text
    return answer.json()["deliveries"]  # type: ignore[no-any-return]


def outcome(delivery: dict[str, Any]) -> str:
    """What the consumer target answered last: 'job N' or 'skipped: why' ('' if not yet)."""
    history = delivery["history"]
    return str(history[-1]["excerpt"]) if history and delivery["state"] == "delivered" else ""


def input_of(http: httpx.Client, delivery: dict[str, Any]) -> int:
    """The transaction a delivered event is about."""
    subject = http.get(f"/api/v1/events/{delivery['event_id']}").json()["subject"]
    prefix, _, number = subject.partition("/")
    assert prefix == "transactions", subject
    return int(number)


def settled(http: httpx.Client, subscription_id: str, count: int) -> list[dict[str, Any]] | None:
    """The subscription's deliveries once there are ``count``, all answered."""
    shown = deliveries(http, subscription_id)
    if len(shown) == count and all(outcome(item) for item in shown):
        return shown
    return None


def run_job_ids(shown: list[dict[str, Any]]) -> list[int]:
    """The consumer.run jobs the deliveries started."""
    return [int(outcome(item).split()[1]) for item in shown if outcome(item).startswith("job ")]


def finished_job(http: httpx.Client, job_id: int) -> dict[str, Any]:
    return wait_job(str(http.base_url), job_id, timeout=WAIT_SECONDS)


def answer_on(http: httpx.Client, view: dict[str, Any], transaction_id: int) -> str:
    """What the consumer's target answered to the event of ``transaction_id``."""

    def probe() -> str | None:
        for delivery in deliveries(http, view["subscription_id"]):
            if outcome(delivery) and input_of(http, delivery) == transaction_id:
                return outcome(delivery)
        return None

    return eventually(probe, f"{view['name']}'s answer to transaction {transaction_id}")


def run_on(http: httpx.Client, view: dict[str, Any], transaction_id: int) -> dict[str, Any]:
    """The consumer.run job the consumer got for ``transaction_id``, finished."""
    answer = answer_on(http, view, transaction_id)
    assert answer.startswith("job "), answer
    job = finished_job(http, int(answer.split()[1]))
    assert job["kind"] == "consumer.run"
    return job


def process_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (a zombie awaiting its reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


# -- the tests --------------------------------------------------------------------------------


def test_the_published_example_publishes_an_upper_case_copy_linked_to_its_input(
    http: httpx.Client, url: str, consumers: Consumers, tmp_path: Path
) -> None:
    package = make_zip(
        tmp_path / "seed.zip", {name: (SEED / name).read_bytes() for name in SEED_FILES}
    ).read_bytes()
    view = consumers.ready("seed-upper", package)
    assert view["version"] == hashlib.sha256(package).hexdigest()[:12]
    assert view["filter"] == (SEED / "jsonpath2.txt").read_text().strip()
    listed = http.get("/api/v1/consumers").json()["consumers"]
    assert "seed-upper" in [item["name"] for item in listed]

    text = b"Hello, Consumer!\nsecond line\n"
    original = upload(
        url,
        tmp_path / "in",
        {"sub/a.txt": text, "blob.bin": bytes(range(256))},
        project="proj-seed",
        instrument="inst-seed",
    )

    job = run_on(http, view, original)
    assert job["state"] == "succeeded", job
    made = transaction(http, job["transaction_id"])
    assert made["id"] != original
    assert (made["project"], made["instrument"]) == ("proj-seed", "inst-seed")
    assert file_paths(made) == ["sub/a.txt"]
    assert content(http, made, "sub/a.txt") == text.upper()
    values = key_values(made)
    assert values["conveyor.derived_from"] == str(original)
    assert values["conveyor.consumer"] == "seed-upper"
    assert values["conveyor.consumer.version"] == view["version"]
    assert values["conveyor.consumer.run"] == str(job["id"])
    assert json.loads(values["conveyor.lineage"]) == ["seed-upper"]

    # The copy's own event reaches the consumer too, and is refused: it made that data.
    shown = eventually(
        lambda: settled(http, view["subscription_id"], 2), "the output's delivery", 60
    )
    by_input = {input_of(http, item): outcome(item) for item in shown}
    assert by_input[original] == f"job {job['id']}"
    assert by_input[made["id"]].startswith("skipped:"), by_input
    assert "made this data" in by_input[made["id"]]
    assert run_job_ids(shown) == [job["id"]]


def test_files_left_in_uploads_are_published_and_a_run_that_writes_nothing_publishes_none(
    http: httpx.Client, url: str, consumers: Consumers, tmp_path: Path
) -> None:
    project = "proj-writer"
    writer = consumers.ready("writer", script_zip(tmp_path, "writer", WRITER, project))
    quiet = consumers.ready("quiet", script_zip(tmp_path, "quiet", QUIET, project))
    original = upload(url, tmp_path / "in", {"in/x.dat": b"\x00\x01"}, project, "inst-w")

    job = run_on(http, writer, original)
    assert job["state"] == "succeeded", job
    made = transaction(http, job["transaction_id"])
    assert made["origin"] == "consumer.run"
    assert (made["project"], made["instrument"]) == (project, "inst-w")
    assert file_paths(made) == ["deep/er/out.csv", "note.txt"]
    assert content(http, made, "deep/er/out.csv") == b"x,y\n1,2\n"
    assert content(http, made, "note.txt") == b"made by the writer\n"
    values = key_values(made)
    assert values["conveyor.derived_from"] == str(original)
    assert values["conveyor.consumer"] == "writer"
    assert values["conveyor.consumer.run"] == str(job["id"])
    assert json.loads(values["conveyor.lineage"]) == ["writer"]

    nothing = run_on(http, quiet, original)
    assert nothing["state"] == "succeeded", nothing
    assert nothing["transaction_id"] is None

    # The writer's output is in the project too: the quiet one runs on it (another
    # consumer made it), the writer does not (it made it).
    assert run_on(http, quiet, made["id"])["transaction_id"] is None
    assert answer_on(http, writer, made["id"]) == (
        "skipped: consumer 'writer' made this data (lineage writer)"
    )


def test_a_consumer_posting_to_the_api_itself_is_stamped_and_not_triggered_again(
    http: httpx.Client, url: str, consumers: Consumers, tmp_path: Path
) -> None:
    project = "proj-direct"
    view = consumers.ready("direct", script_zip(tmp_path, "direct", DIRECT, project))
    original = upload(url, tmp_path / "in", {"x.txt": b"input\n"}, project, "inst-d")

    job = run_on(http, view, original)
    assert job["state"] == "succeeded", job
    # the run ends with the transaction the consumer made, stamped by the server
    made = transaction(http, job["transaction_id"])
    assert made["id"] != original
    assert file_paths(made) == ["direct.txt"]
    stamped = [(row["key"], row["value"]) for row in made["key_values"]]
    assert sorted(stamped) == [
        ("conveyor.consumer", "direct"),
        ("conveyor.consumer.run", str(job["id"])),
        ("conveyor.consumer.version", view["version"]),
        ("conveyor.derived_from", str(original)),
        ("conveyor.lineage", '["direct"]'),
    ]
    assert answer_on(http, view, made["id"]) == (
        "skipped: consumer 'direct' made this data (lineage direct)"
    )


def test_a_file_past_the_size_limit_and_outputs_past_the_total_fail_the_run(
    http: httpx.Client, url: str, consumers: Consumers, tmp_path: Path
) -> None:
    project = "proj-greedy"
    view = consumers.ready("greedy", script_zip(tmp_path, "greedy", GREEDY, project))
    big = upload(url, tmp_path / "big", {"big.txt": b"one big file\n"}, project, "inst-g")
    many = upload(url, tmp_path / "many", {"many.txt": b"many files\n"}, project, "inst-g")

    too_big = run_on(http, view, big)
    assert (too_big["state"], too_big["task"]) == ("failed", "run consumer"), too_big
    assert too_big["error"].startswith(
        f"exit status 1 (DST/uploads/big.bin reached the limit of {FILE_LIMIT} bytes on a "
        "file's size); stderr: "
    ), too_big["error"]
    assert "File too large" in too_big["error"]
    assert too_big["transaction_id"] is None

    too_much = run_on(http, view, many)
    assert (too_much["state"], too_much["task"]) == ("failed", "publish outputs"), too_much
    assert too_much["error"] == (
        f"DST/uploads holds {3 * (FILE_LIMIT - 1)} bytes in 3 files, over the limit of "
        f"{UPLOADS_LIMIT} bytes a run may publish"
    )
    assert too_much["transaction_id"] is None


def test_a_consumer_that_exits_non_zero_fails_its_job_with_its_stderr(
    http: httpx.Client, url: str, consumers: Consumers, tmp_path: Path
) -> None:
    project = "proj-failing"
    view = consumers.ready("failing", script_zip(tmp_path, "failing", FAILING, project))
    original = upload(url, tmp_path / "in", {"x.txt": b"anything\n"}, project, "inst-f")

    job = run_on(http, view, original)
    assert job["state"] == "failed", job
    assert job["task"] == "run consumer"
    assert job["transaction_id"] is None
    assert "exit status 3" in job["error"]
    assert "the frobnicator is broken" in job["error"]


def test_a_consumer_past_its_timeout_is_killed_with_its_process_group(
    http: httpx.Client, url: str, consumers: Consumers, tmp_path: Path
) -> None:
    project = "proj-hanging"
    pidfile = tmp_path / "pids.txt"
    code = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pidfile)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(600)\n"
    )
    view = consumers.ready(
        "hanging", script_zip(tmp_path, "hanging", code, project), timeout_seconds=2
    )
    assert view["timeout_seconds"] == 2
    original = upload(url, tmp_path / "in", {"x.txt": b"wait for it\n"}, project, "inst-h")

    job = run_on(http, view, original)
    assert job["state"] == "failed", job
    assert job["task"] == "run consumer"
    assert "did not finish in 2 s" in job["error"], job["error"]
    main, child = (int(pid) for pid in pidfile.read_text().split())
    eventually(lambda: process_gone(main), f"consumer process {main} gone", 15)
    eventually(lambda: process_gone(child), f"its child {child} gone", 15)


def test_consumers_feed_each_other_but_never_their_own_lineage(
    http: httpx.Client, url: str, consumers: Consumers, tmp_path: Path
) -> None:
    project = "proj-chain"
    package = script_zip(tmp_path, "copy", COPY, project)
    a = consumers.ready("chain-a", package)
    b = consumers.ready("chain-b", package)
    assert a["version"] == b["version"]
    original = upload(url, tmp_path / "in", {"d/x.txt": b"payload\n"}, project, "inst-c")

    # The original, A's copy, B's copy, A's copy of B's and B's copy of A's: five events.
    seen = {
        view["name"]: eventually(
            partial(settled, http, view["subscription_id"], 5),
            f"{view['name']}'s five deliveries",
        )
        for view in (a, b)
    }
    runs: set[tuple[str, int]] = set()
    made_by_lineage: dict[tuple[str, ...], int] = {}
    skipped: dict[tuple[str, tuple[str, ...]], str] = {}
    for name, shown in seen.items():
        for delivery in shown:
            source = input_of(http, delivery)
            answer = outcome(delivery)
            if answer.startswith("job "):
                runs.add((name, source))
                job = finished_job(http, int(answer.split()[1]))
                assert job["state"] == "succeeded", job
                made = transaction(http, job["transaction_id"])
                assert content(http, made, "d/x.txt") == b"payload\n"
                values = key_values(made)
                assert values["conveyor.derived_from"] == str(source)
                assert values["conveyor.consumer"] == name
                made_by_lineage[tuple(json.loads(values["conveyor.lineage"]))] = made["id"]
            else:
                values = key_values(transaction(http, source))
                skipped[name, tuple(json.loads(values["conveyor.lineage"]))] = answer

    assert set(made_by_lineage) == {
        ("chain-a",),
        ("chain-b",),
        ("chain-a", "chain-b"),
        ("chain-b", "chain-a"),
    }
    assert runs == {
        ("chain-a", original),
        ("chain-b", original),
        ("chain-b", made_by_lineage["chain-a",]),
        ("chain-a", made_by_lineage["chain-b",]),
    }
    assert set(skipped) == {
        ("chain-a", ("chain-a",)),
        ("chain-a", ("chain-a", "chain-b")),
        ("chain-a", ("chain-b", "chain-a")),
        ("chain-b", ("chain-b",)),
        ("chain-b", ("chain-a", "chain-b")),
        ("chain-b", ("chain-b", "chain-a")),
    }
    assert skipped["chain-a", ("chain-a",)] == (
        "skipped: consumer 'chain-a' made this data (lineage chain-a)"
    )
    assert skipped["chain-b", ("chain-a", "chain-b")] == (
        "skipped: consumer 'chain-b' made this data (lineage chain-a → chain-b)"
    )


def test_a_depth_limit_of_one_keeps_consumers_off_every_consumer_output(
    http: httpx.Client, url: str, consumers: Consumers, tmp_path: Path
) -> None:
    project = "proj-chain"  # the package of the chain test: its venv is built already
    package = script_zip(tmp_path, "copy", COPY, project)
    first = consumers.ready("shallow-a", package, max_depth=1, allow_self=True)
    second = consumers.ready("shallow-b", package, max_depth=1, allow_self=True)
    assert (first["max_depth"], first["allow_self"]) == (1, True)
    original = upload(url, tmp_path / "in", {"y.txt": b"once\n"}, project, "inst-s")

    for view in (first, second):
        # The original and the two copies made of it.
        shown = eventually(
            partial(settled, http, view["subscription_id"], 3),
            f"{view['name']}'s three deliveries",
        )
        answers = {input_of(http, item): outcome(item) for item in shown}
        assert answers.pop(original).startswith("job "), answers
        assert (
            sorted(answers.values()) == ["skipped: derivation depth 1 reaches the limit of 1"] * 2
        )
        (job_id,) = run_job_ids(shown)
        assert finished_job(http, job_id)["state"] == "succeeded"


def test_packages_and_names_are_checked_before_anything_is_installed(
    http: httpx.Client, tmp_path: Path
) -> None:
    def refused(body: bytes, name: str = "checked") -> str:
        answer = http.post("/api/v1/consumers", params={"name": name}, content=body, headers=ZIP)
        assert answer.status_code == 400, answer.text
        return str(answer.json()["detail"])

    assert "is not a zip archive" in refused(b"plain text, no archive")
    no_entry = make_zip(tmp_path / "no-main.zip", {"main.py": b"print(1)\n"}).read_bytes()
    assert "__main__.py" in refused(no_entry)
    bad_filter = make_zip(
        tmp_path / "bad-filter.zip",
        {"__main__.py": b"print(1)\n", "jsonpath2.txt": b"$[?(@['x'] = "},
    ).read_bytes()
    assert refused(bad_filter).startswith("jsonpath2.txt:")
    good = make_zip(tmp_path / "good.zip", {"__main__.py": b"print(1)\n"}).read_bytes()
    assert "bad name!" in refused(good, name="bad name!")
    names = [item["name"] for item in http.get("/api/v1/consumers").json()["consumers"]]
    assert "checked" not in names and "bad name!" not in names


def test_a_requirement_no_index_has_fails_the_setup_and_says_which_step(
    http: httpx.Client, url: str, consumers: Consumers, tmp_path: Path
) -> None:
    package = make_zip(
        tmp_path / "unknown.zip",
        {
            "__main__.py": b"print(1)\n",
            "requirements.txt": b"conveyor-no-such-package-0xdead\n",
            "jsonpath2.txt": project_filter("proj-never").encode(),
        },
    ).read_bytes()
    added = consumers.install("unknown-req", package)
    job = wait_job(url, added["job_id"], timeout=SETUP_SECONDS)
    assert job["state"] == "failed", job
    view = http.get("/api/v1/consumers/unknown-req").json()
    assert view["state"] == "failed", view
    assert view["error"].startswith("install consumer: install requirements.txt:"), view
    assert "conveyor-no-such-package-0xdead" in view["error"]
    assert view["subscription_id"] is None


def test_removing_a_consumer_removes_its_subscription(
    http: httpx.Client, consumers: Consumers, tmp_path: Path
) -> None:
    view = consumers.ready("doomed", script_zip(tmp_path, "quiet", QUIET, "proj-writer"))
    listed = http.get("/api/v1/subscriptions", params={"all": "true"}).json()["subscriptions"]
    mine = [item for item in listed if item["id"] == view["subscription_id"]]
    assert len(mine) == 1
    assert mine[0]["target"] == "consumer://doomed"
    assert (mine[0]["dialect"], mine[0]["shape"]) == ("jsonpath2", "pacifica")
    assert mine[0]["filter"] == project_filter("proj-writer")

    assert http.delete("/api/v1/consumers/doomed").status_code == 204
    assert http.get("/api/v1/consumers/doomed").status_code == 404
    assert http.delete("/api/v1/consumers/doomed").status_code == 404
    listed = http.get("/api/v1/subscriptions", params={"all": "true"}).json()["subscriptions"]
    assert view["subscription_id"] not in [item["id"] for item in listed]
    assert http.get(f"/api/v1/subscriptions/{view['subscription_id']}").status_code == 404


def test_consumer_subscriptions_are_managed_by_conveyor_alone(
    http: httpx.Client, consumers: Consumers, tmp_path: Path
) -> None:
    made = http.post(
        "/api/v1/subscriptions",
        json={
            "name": "sneaky",
            "target": "consumer://x",
            "filter": project_filter("proj-never"),
            "dialect": "jsonpath2",
            "shape": "pacifica",
        },
    )
    assert made.status_code == 400, made.text

    view = consumers.ready("managed", script_zip(tmp_path, "quiet", QUIET, "proj-writer"))
    subscription = f"/api/v1/subscriptions/{view['subscription_id']}"
    patched = http.patch(subscription, json={"filter": project_filter("proj-other")})
    assert patched.status_code == 409, patched.text
    assert "feeds consumer 'managed'" in patched.json()["detail"]
    deleted = http.delete(subscription)
    assert deleted.status_code == 409, deleted.text
    still = http.get(subscription)
    assert still.status_code == 200
    assert still.json()["filter"] == project_filter("proj-writer")

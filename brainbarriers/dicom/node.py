"""``brainbarriers dicom-node``: a DICOM Storage SCP that receives a study, runs the pipeline on it
and sends the RT Structure Set and SEG back by C-STORE.

The node keeps everything in its spool folder, so that nothing received is lost when it stops::

    spool/node.log                      one line per study outcome (no patient identifiers)
    spool/studies/<key>/state.json      the study's job: receiving, queued, running, done, ...
    spool/studies/<key>/images/<series UID>/<SOP instance UID>.dcm
    spool/studies/<key>/run/            the pipeline's run folder (resumable)
    spool/studies/<key>/out/            rtstruct.dcm, seg.dcm as sent

``<key>`` is a hash of the Study Instance UID: logs and folder names carry no patient identifier.
An image is on disk (written under a temporary name, then renamed) before its C-STORE is answered
with success. A study is queued once no image of it has arrived for ``quiet_seconds`` and no
association carrying it is open; one worker runs the queue in order, each job in a child process
(``brainbarriers.dicom.job``: the pipeline, then the exports), so that the node itself stays small
and keeps receiving at full speed while a study runs. On start the node reads the
spool back: studies being received wait for their quiet time again, queued and interrupted
(running) jobs are queued again, results not yet sent are sent again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

LOG = "node.log"
STATE = "state.json"
SEQUENCE_NAMES = ("t1", "t1ce", "t2", "flair", "ct")
RESULT_FORMATS = ("rtstruct", "seg")
MIN_IMAGES = 5  # a series with fewer images (a localiser, a single screenshot) is not a volume
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_CONFIG_KEYS = {"ae_title", "port", "bind", "allowed_calling_aets", "spool", "quiet_seconds",
                "destination", "steps", "options", "device", "required_sequences", "series_rules",
                "send", "retry_seconds"}


@dataclass
class Destination:
    ae_title: str
    host: str
    port: int

    def describe(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass
class SeriesRule:
    pattern: re.Pattern
    sequence: str | None  # None: ignore series whose description matches


@dataclass
class NodeConfig:
    ae_title: str
    port: int
    spool: Path
    destination: Destination
    allowed_calling_aets: list[str]
    bind: str = "0.0.0.0"
    quiet_seconds: float = 60.0
    steps: list[str] | None = None
    options: dict = field(default_factory=dict)
    device: str = "cpu"
    required_sequences: list[str] = field(default_factory=lambda: ["t1", "t1ce", "t2", "flair"])
    series_rules: list[SeriesRule] = field(default_factory=list)
    send: list[str] = field(default_factory=lambda: list(RESULT_FORMATS))
    retry_seconds: float = 300.0
    source: Path | None = None  # the configuration file


def _ae_title(value, path: Path, key: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 16 or "\\" in value:
        raise InputError(path, f"{key} must be an AE title of 1 to 16 characters, not {value!r}")
    return value.strip()


def _port(value, path: Path, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise InputError(path, f"{key} must be a port number (1-65535), not {value!r}")
    return value


def _number(value, path: Path, key: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise InputError(path, f"{key} must be a number of seconds >= 0, not {value!r}")
    return float(value)


def load_config(path: str | Path) -> NodeConfig:
    """The node's configuration from a JSON file; every problem names the file and the key."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as e:
        raise InputError(path, f"cannot be read ({e.strerror})") from None
    except ValueError as e:
        raise InputError(path, f"is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise InputError(path, "must hold a JSON object")
    unknown = sorted(set(raw) - _CONFIG_KEYS)
    if unknown:
        raise InputError(path, f"unknown key(s) {', '.join(unknown)} (known: "
                         f"{', '.join(sorted(_CONFIG_KEYS))})")
    for key in ("ae_title", "port", "spool", "destination", "allowed_calling_aets"):
        if key not in raw:
            raise InputError(path, f"has no {key!r}")
    dest = raw["destination"]
    if not isinstance(dest, dict) or set(dest) != {"ae_title", "host", "port"}:
        raise InputError(path, "destination must be an object with exactly ae_title, host, port")
    if not isinstance(dest["host"], str) or not dest["host"]:
        raise InputError(path, f"destination.host must be a host name, not {dest['host']!r}")
    allowed = raw["allowed_calling_aets"]
    if not isinstance(allowed, list) or not allowed:
        raise InputError(path, "allowed_calling_aets must be a non-empty list of AE titles (the "
                         "scanners and PACS allowed to send)")
    spool = Path(raw["spool"])
    if not spool.is_absolute():
        spool = path.parent / spool
    config = NodeConfig(
        ae_title=_ae_title(raw["ae_title"], path, "ae_title"),
        port=_port(raw["port"], path, "port"),
        spool=spool,
        destination=Destination(_ae_title(dest["ae_title"], path, "destination.ae_title"),
                                dest["host"], _port(dest["port"], path, "destination.port")),
        allowed_calling_aets=[_ae_title(a, path, "allowed_calling_aets") for a in allowed],
        source=path,
    )
    if "bind" in raw:
        config.bind = str(raw["bind"])
    if "quiet_seconds" in raw:
        config.quiet_seconds = _number(raw["quiet_seconds"], path, "quiet_seconds")
    if "retry_seconds" in raw:
        config.retry_seconds = _number(raw["retry_seconds"], path, "retry_seconds")
    if "steps" in raw:
        steps = raw["steps"]
        if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps) or not steps:
            raise InputError(path, "steps must be a non-empty list of step names")
        config.steps = steps  # their names are checked by check_steps (a child process)
    if "options" in raw:
        if not isinstance(raw["options"], dict) or not all(
                isinstance(v, dict) for v in raw["options"].values()):
            raise InputError(path, "options must be an object {step: {option: value}}")
        config.options = raw["options"]
    if "device" in raw:
        if raw["device"] not in ("auto", "cpu", "cuda"):
            raise InputError(path, f"device must be auto, cpu or cuda, not {raw['device']!r}")
        config.device = raw["device"]
    if "required_sequences" in raw:
        required = raw["required_sequences"]
        if not isinstance(required, list) or not required or any(
                s not in SEQUENCE_NAMES for s in required):
            raise InputError(path, f"required_sequences must list some of {', '.join(SEQUENCE_NAMES)}")
        config.required_sequences = required
    if "send" in raw:
        send = raw["send"]
        if not isinstance(send, list) or not send or any(s not in RESULT_FORMATS for s in send):
            raise InputError(path, f"send must list some of {', '.join(RESULT_FORMATS)}")
        config.send = send
    for n, rule in enumerate(raw.get("series_rules", [])):
        key = f"series_rules[{n}]"
        if not isinstance(rule, dict) or set(rule) != {"description", "sequence"}:
            raise InputError(path, f"{key} must be an object with description (a regular "
                             "expression) and sequence (t1, t1ce, t2, flair, ct or ignore)")
        if rule["sequence"] not in (*SEQUENCE_NAMES, "ignore"):
            raise InputError(path, f"{key}.sequence must be one of {', '.join(SEQUENCE_NAMES)} "
                             f"or ignore, not {rule['sequence']!r}")
        try:
            pattern = re.compile(rule["description"], re.IGNORECASE)
        except (re.error, TypeError) as e:
            raise InputError(path, f"{key}.description is not a regular expression ({e})") from None
        config.series_rules.append(
            SeriesRule(pattern, None if rule["sequence"] == "ignore" else rule["sequence"]))
    return config


def _job_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "brainbarriers.dicom.job", *args]


def check_steps(config: NodeConfig) -> None:
    """Check the configured steps in a child process (the node itself never loads the networks)."""
    if not config.steps:
        return
    result = subprocess.run(_job_command("--check", "--steps", ",".join(config.steps)),
                            capture_output=True, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit code {result.returncode}"]
        raise InputError(config.source, f"steps: {lines[-1]}")


def study_key(study_uid: str) -> str:
    """The spool and log name of a study: no patient identifier, stable across restarts."""
    return hashlib.sha256(study_uid.encode()).hexdigest()[:16]


def _float(ds, key: str) -> float | None:
    try:
        value = ds.get(key)
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


_CONTRAST_WORDS = re.compile(r"(\bgd\b|gado|\+c\b|\bc\+|\bce\b|t1ce|t1c\b|post|contrast|\bkm\b)")


def classify_series(ds, rules: list[SeriesRule] = ()) -> tuple[str | None, str]:
    """(sequence or None, why) for a series from one of its image headers.

    A site's rules on SeriesDescription come first; then the usual words of SeriesDescription and
    ProtocolName; then the acquisition attributes (repetition, echo and inversion times, contrast
    agent). None: the series is not used (not MR or CT, or not recognised)."""
    modality = str(ds.get("Modality", ""))
    description = str(ds.get("SeriesDescription", ""))
    for rule in rules:
        if rule.pattern.search(description):
            if rule.sequence is None:
                return None, f"ignored by the site rule {rule.pattern.pattern!r}"
            return rule.sequence, f"site rule {rule.pattern.pattern!r}"
    if modality == "CT":
        return "ct", "Modality CT"
    if modality != "MR":
        return None, f"modality {modality or 'missing'}, not MR or CT"
    text = f"{description} {ds.get('ProtocolName', '')}".lower()
    contrast = bool(str(ds.get("ContrastBolusAgent", "")).strip()) or bool(
        _CONTRAST_WORDS.search(text))
    if re.search(r"flair|dark.?fluid|tirm", text):
        return "flair", "description names FLAIR"
    if re.search(r"t2", text):
        return "t2", "description names T2"
    if re.search(r"t1|mprage|spgr|bravo|tfe\b|vibe", text):
        return ("t1ce", "description names T1 with contrast") if contrast else (
            "t1", "description names T1")
    tr, te, ti = _float(ds, "RepetitionTime"), _float(ds, "EchoTime"), _float(ds, "InversionTime")
    if ti is not None and ti >= 1500 and (tr or 0) >= 4000:
        return "flair", f"inversion time {ti:g} ms (fluid suppressed)"
    if tr is not None and te is not None:
        if tr <= 1200 and te <= 30 or (ti is not None and 300 <= ti < 1500):
            return ("t1ce" if contrast else "t1"), f"T1-weighted timing (TR {tr:g}, TE {te:g} ms)"
        if tr >= 2000 and te >= 60:
            return "t2", f"T2-weighted timing (TR {tr:g}, TE {te:g} ms)"
    return None, ("not recognised from SeriesDescription, ProtocolName or the timing attributes "
                  "(add a series_rules entry)")


def _write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


class DicomNode:
    """The Storage SCP, its spool and the worker. ``start()`` returns at once; ``stop()`` waits
    for the worker to reach a safe point (a running pipeline is cancelled; its job is re-queued)."""

    def __init__(self, config: NodeConfig, *, poll_seconds: float = 0.5,
                 stop_seconds: float = 30.0):
        self.config = config
        self.stop_seconds = stop_seconds
        self.spool = config.spool
        self.studies = self.spool / "studies"
        self.poll_seconds = poll_seconds
        self.log = logging.getLogger(f"brainbarriers.dicom_node.{id(self)}")
        self._lock = threading.Lock()
        self._state: dict[str, dict] = {}  # key -> the study's job (as in its state.json)
        self._last: dict[str, float] = {}  # key -> time the last image arrived (monotonic)
        self._open: dict[str, int] = {}  # key -> associations carrying it still open
        self._assocs: dict[int, dict] = {}  # id(assoc) -> {"studies": {key: n}, "released": bool}
        self._stop = threading.Event()
        self._child: subprocess.Popen | None = None
        self._server = None
        self._worker = None
        self.running_key: str | None = None

    # --- spool -------------------------------------------------------------------------------
    def _save(self, key: str) -> None:
        _write_json(self.studies / key / STATE, self._state[key])

    def _set(self, key: str, **changes) -> None:
        with self._lock:
            self._state[key].update(changes, updated=time.time())
            self._save(key)

    def _recover(self) -> None:
        """Read the spool back after a start: nothing received is lost."""
        self.studies.mkdir(parents=True, exist_ok=True)
        for folder in sorted(self.studies.iterdir()):
            path = folder / STATE
            if not path.is_file():
                continue
            try:
                state = json.loads(path.read_text())
            except ValueError:
                self.log.error("study %s: %s is not valid JSON; the study is left as it is",
                               folder.name, path)
                continue
            key = folder.name
            status = state.get("status")
            if status == "running":
                state["status"] = "queued"
                self.log.info("study %s: re-queued (the node stopped during its run)", key)
            if status in ("receiving", "queued", "running", "unsent"):
                self._state[key] = state
                self._last[key] = time.monotonic()  # a fresh quiet period from now
                _write_json(path, state)
            else:
                self._state[key] = state

    # --- SCP ---------------------------------------------------------------------------------
    def _on_store(self, event) -> int:
        ds = event.dataset
        calling = event.assoc.requestor.ae_title
        uids = [str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID")]
        sop = str(event.request.AffectedSOPInstanceUID or "")
        if not all(_UID.match(u) for u in (*uids, sop)):
            self.log.warning("image from AE %r refused: StudyInstanceUID, SeriesInstanceUID or "
                             "SOPInstanceUID missing or malformed", calling)
            return 0xA900  # dataset does not match SOP class
        key = study_key(uids[0])
        folder = self.studies / key / "images" / uids[1]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{sop}.dcm"
            fd, tmp = tempfile.mkstemp(prefix=".part.", dir=folder)
            with os.fdopen(fd, "wb") as f:
                f.write(event.encoded_dataset(include_meta=True))
            os.replace(tmp, target)
        except OSError as e:
            self.log.error("study %s: image not stored in %s (%s); the sender is told to resend",
                           key, folder, e.strerror)
            return 0xA700  # out of resources
        with self._lock:
            state = self._state.get(key)
            if state is None or state["status"] in ("done", "failed", "incomplete", "unsent"):
                # A new study, or one sent again: received afresh (a cut transfer stays marked
                # until an association carrying the study ends normally).
                state = {"status": "receiving", "received_since": time.time(),
                         "interrupted": (state or {}).get("interrupted", False)}
                self._state[key] = state
                self._save(key)
            elif state["status"] == "running" and not state.get("more"):
                state["more"] = True
                self._save(key)
                self.log.info("study %s: more images arrive during its run; it runs again "
                              "once they stop", key)
            elif state["status"] == "queued":
                state["status"] = "receiving"
                self._save(key)
            self._last[key] = time.monotonic()
            assoc = self._assocs.setdefault(id(event.assoc), {"studies": {}, "released": False})
            if key not in assoc["studies"]:
                self._open[key] = self._open.get(key, 0) + 1
            assoc["studies"][key] = assoc["studies"].get(key, 0) + 1
        return 0x0000

    def _on_echo(self, event) -> int:
        return 0x0000

    def _on_released(self, event) -> None:
        with self._lock:
            assoc = self._assocs.get(id(event.assoc))
            if assoc:
                assoc["released"] = True

    def _on_conn_close(self, event) -> None:
        with self._lock:
            assoc = self._assocs.pop(id(event.assoc), None)
            if not assoc:
                return
            for key, n in assoc["studies"].items():
                self._open[key] = max(self._open.get(key, 1) - 1, 0)
                state = self._state.get(key)
                if state is None:
                    continue
                if assoc["released"]:
                    if state.get("interrupted"):
                        state["interrupted"] = False
                        self._save(key)
                else:
                    state["interrupted"] = True
                    self._save(key)
                    self.log.warning(
                        "study %s: transfer cut: the association from AE %r ended without "
                        "release after %d image(s); the study waits to be sent again",
                        key, event.assoc.requestor.ae_title, n)
                self._last[key] = time.monotonic()

    def _on_rejected(self, event) -> None:
        requestor = event.assoc.requestor
        self.log.warning("association from calling AE %r (%s) rejected: not in "
                         "allowed_calling_aets", requestor.ae_title, requestor.address)

    # --- worker ------------------------------------------------------------------------------
    def _due(self) -> str | None:
        """Move quiet studies to the queue; the oldest queued study, if any."""
        now = time.monotonic()
        with self._lock:
            for key, state in self._state.items():
                if state["status"] != "receiving" or self._open.get(key, 0):
                    continue
                if now - self._last.get(key, now) < self.config.quiet_seconds:
                    continue
                if state.get("interrupted"):
                    state.update(status="incomplete", updated=time.time())
                    self._save(key)
                    self.log.error("study %s: incomplete: its transfer was cut and it was not "
                                   "sent again within %g s; not processed (send it again)", key,
                                   self.config.quiet_seconds)
                    continue
                state.update(status="queued", queued_at=time.time(), updated=time.time())
                self._save(key)
                if self.running_key:
                    self.log.info("study %s: queued behind the study being processed", key)
            queued = [(s.get("queued_at", 0), k) for k, s in self._state.items()
                      if s["status"] == "queued"]
            unsent = [(s.get("updated", 0), k) for k, s in self._state.items()
                      if s["status"] == "unsent"
                      and time.time() - s.get("updated", 0) >= self.config.retry_seconds]
        if queued:
            return min(queued)[1]
        return min(unsent)[1] if unsent else None

    def _loop(self) -> None:
        while not self._stop.is_set():
            key = self._due()
            if key is None:
                self._stop.wait(self.poll_seconds)
                continue
            self.running_key = key
            try:
                self._process(key)
            except Exception as e:  # the node keeps running whatever one study does
                self._set(key, status="failed", message=f"{type(e).__name__}: {e}")
                self.log.exception("study %s: failed: internal error %s: %s", key,
                                   type(e).__name__, e)
            finally:
                self.running_key = None
                with self._lock:
                    state = self._state[key]
                    if state.pop("more", False):
                        state["status"] = "receiving"
                        self._last[key] = time.monotonic()
                        self._save(key)

    def _series(self, key: str) -> tuple[dict[str, Path], list[str]]:
        """{sequence: series folder} and notes (series ignored, duplicates) for one study."""
        import pydicom

        found: dict[str, list[tuple[int, int, Path, str]]] = {}
        notes = []
        images = self.studies / key / "images"
        for folder in sorted(images.iterdir()) if images.is_dir() else []:
            files = [f for f in folder.iterdir() if f.suffix == ".dcm" and not f.name.startswith(".")]
            if not files:
                continue
            ds = pydicom.dcmread(files[0], stop_before_pixels=True)
            number = ds.get("SeriesNumber", "?")
            sequence, why = classify_series(ds, self.config.series_rules)
            if sequence is not None and len(files) < MIN_IMAGES:
                sequence, why = None, f"{len(files)} image(s) only"
            if sequence is None:
                notes.append(f"series {number} ignored ({why})")
                continue
            found.setdefault(sequence, []).append((len(files), int(number or 0) if str(
                number).isdigit() else 0, folder, f"series {number}"))
        chosen = {}
        for sequence, candidates in found.items():
            candidates.sort(reverse=True)  # most images, then the latest series number
            chosen[sequence] = candidates[0][2]
            notes.append(f"{sequence}={candidates[0][3]}")
            for other in candidates[1:]:
                notes.append(f"{other[3]} also looks {sequence}, not used")
        return chosen, notes

    def _process(self, key: str) -> None:
        state = self._state[key]
        study = self.studies / key
        t0 = time.monotonic()
        if state["status"] == "unsent":
            self._set(key, status="running")
            try:
                sent = self._send(key, [study / "out" / f"{f}.dcm" for f in self.config.send])
            except OSError as e:
                self._set(key, status="unsent", message=str(e))
                self.log.error("study %s: still not sent: %s; retried every %g s", key, e,
                               self.config.retry_seconds)
                return
            self._set(key, status="done", message=sent)
            self.log.info("study %s: done: %s (sent again after a failed send)", key, sent)
            return
        self._set(key, status="running", started=time.time())
        series, notes = self._series(key)
        missing = [s for s in self.config.required_sequences if s not in series]
        if missing:
            found = ", ".join(sorted(series)) or "none"
            message = (f"no {', '.join(m.upper() for m in missing)} series (found: {found}; "
                       f"{'; '.join(notes) or 'no series'})")
            self._set(key, status="failed", message=message)
            self.log.error("study %s: failed: %s", key, message)
            return
        command = [f"--input={sequence}={folder}" for sequence, folder in series.items()]
        command += ["--out", str(study / "run"), "--results", str(study / "out"),
                    "--device", self.config.device, "--options", json.dumps(self.config.options),
                    "--formats", ",".join(self.config.send)]
        if self.config.steps:
            command += ["--steps", ",".join(self.config.steps)]
        with open(study / "job.log", "w") as log:
            self._child = subprocess.Popen(_job_command(*command), stdout=subprocess.PIPE,
                                           stderr=log, text=True)
            while True:  # studies going quiet meanwhile are queued (and logged) at once
                try:
                    stdout, _ = self._child.communicate(timeout=self.poll_seconds)
                    break
                except subprocess.TimeoutExpired:
                    self._due()
        code, self._child = self._child.returncode, None
        if code != 0 and self._stop.is_set():
            self._set(key, status="queued")
            self.log.info("study %s: run interrupted by the node stopping; re-queued", key)
            return
        if code != 0:
            lines = (study / "job.log").read_text(errors="replace").strip().splitlines()
            last = lines[-1] if lines else ""
            if code == 2:
                message = last.replace(str(study), f"<study {key}>")
            else:
                message = (f"internal error (exit code {code}): {last}; the whole message is in "
                           f"{study / 'job.log'}")
            self._set(key, status="failed", message=message)
            self.log.error("study %s: failed: %s (%s)", key, message, "; ".join(notes))
            return
        result = json.loads(stdout.strip().splitlines()[-1])
        files = [Path(f) for f in result["files"]]
        structures = len(result["segments"])
        seconds = time.monotonic() - t0
        try:
            sent = self._send(key, files)
        except OSError as e:
            self._set(key, status="unsent", message=str(e))
            self.log.error("study %s: processed in %.1f s (%d structures) but not sent: %s; "
                           "retried every %g s", key, seconds, structures, e,
                           self.config.retry_seconds)
            return
        self._set(key, status="done", message=sent, seconds=round(seconds, 1))
        self.log.info("study %s: done in %.1f s: %d structures, %s; %s", key, seconds,
                      structures, sent, "; ".join(notes))

    def _send(self, key: str, files: list[Path]) -> str:
        """C-STORE ``files`` to the destination; returns what was sent, raises OSError if not."""
        import pydicom
        from pynetdicom import AE

        dest = self.config.destination
        datasets = [pydicom.dcmread(f) for f in files]
        ae = AE(ae_title=self.config.ae_title)
        for uid in sorted({ds.SOPClassUID for ds in datasets}):
            ae.add_requested_context(uid)
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            raise OSError(f"no association with the destination {dest.describe()}")
        try:
            for f, ds in zip(files, datasets):
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code is None or code not in (0x0000, 0xB000, 0xB007, 0xB006):
                    raise OSError(f"the destination {dest.describe()} refused {f.name} "
                                  f"(status {'none' if code is None else hex(code)})")
        finally:
            assoc.release()
        names = {"1.2.840.10008.5.1.4.1.1.481.3": "RTSTRUCT", "1.2.840.10008.5.1.4.1.1.66.4": "SEG"}
        return f"sent {' + '.join(names.get(ds.SOPClassUID, 'object') for ds in datasets)} to " \
               f"{dest.describe()}"

    # --- life cycle --------------------------------------------------------------------------
    def start(self) -> None:
        from pynetdicom import AE, StoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        check_steps(self.config)
        self.spool.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.spool / LOG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(handler)
        self.log.setLevel(logging.INFO)
        self._recover()
        ae = AE(ae_title=self.config.ae_title)
        ae.supported_contexts = StoragePresentationContexts
        ae.add_supported_context(Verification)
        ae.require_calling_aet = self.config.allowed_calling_aets
        ae.maximum_associations = 8
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_RELEASED, self._on_released), (evt.EVT_CONN_CLOSE, self._on_conn_close),
                    (evt.EVT_REJECTED, self._on_rejected)]
        try:
            self._server = ae.start_server((self.config.bind, self.config.port), block=False,
                                           evt_handlers=handlers)
        except OSError as e:
            raise InputError(None, f"cannot listen on {self.config.bind}:{self.config.port} "
                             f"({e.strerror})") from None
        pending = sum(s["status"] in ("receiving", "queued", "unsent") for s in self._state.values())
        self._worker = threading.Thread(target=self._loop, name="dicom-node-worker", daemon=True)
        self._worker.start()
        self.log.info("listening as %s on %s:%d (calling AEs allowed: %s); results to %s; "
                      "%d study job(s) pending in %s", self.config.ae_title, self.config.bind,
                      self.config.port, ", ".join(self.config.allowed_calling_aets),
                      self.config.destination.describe(), pending, self.spool)

    def stop(self) -> None:
        self._stop.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.terminate()  # the job stops at its next safe point and is re-queued
            try:
                child.wait(timeout=self.stop_seconds)
            except subprocess.TimeoutExpired:  # no safe point in time: its outputs are atomic
                child.kill()
        if self._server is not None:
            self._server.shutdown()
        if self._worker is not None:
            self._worker.join()
        self.log.info("stopped")
        for handler in list(self.log.handlers):
            handler.close()
            self.log.removeHandler(handler)

    def status(self) -> dict[str, str]:
        with self._lock:
            return {k: s["status"] for k, s in self._state.items()}

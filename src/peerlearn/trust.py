"""Trust: which code a run directory or a SQL statement may make peerlearn import, and whether a run's files
are still the ones it wrote.

**Code runs only where the user asked for it.** A config given to ``peerlearn train`` (or a dict given to
Python) is the user's own, trusted like a script. What peerlearn *reads* — run directories (every
after-training command, transfer sources, teacher weights, the SQL model store, an exported model's JSON)
and the ``WITH`` clause of a SQL statement — may name code (a ``package.module:callable`` model, a model
factory, a recipe class) only when the user trusts it:

* a run whose records carry a valid signature of this user's key (every run this user trains is signed
  when it writes its records; ``peerlearn trust RUN_DIR`` signs someone else's run after the user looked
  at it), or
* an explicit ``--trust-code`` (Python: ``trust_code=True``) for the command.

Otherwise ``require_trusted_code`` raises ``ConfigError`` (exit 2) naming the reference, where it was read
and how to trust it, before anything is imported. Zoo model names and ``timm:<name>`` need no trust.

**Edited or damaged runs are detected.** When training writes ``config.yaml``, ``run.json``,
``checkpoint.safetensors``, ``model.safetensors`` or ``summary.json`` it records the SHA-256 of each in
``RUN_DIR/signature.json`` (written atomically), with an HMAC-SHA256 over those hashes made with the
user's key::

    {"format": 1, "hashes": {"config.yaml": "<sha256 hex>", ...}, "signer": "<key id>",
     "signature": "<hex of HMAC-SHA256(key, 'peerlearn-run-signature-v1\\n' + canonical JSON of hashes)>"}

Every reader checks the hash of each recorded file it reads; a mismatch, a file without a recorded hash,
a missing or damaged ``signature.json`` and an unknown format are exit 2 naming the file and how to accept
a deliberate edit (``peerlearn trust RUN_DIR`` records the files as they are now). The hashes are checked
for anyone's run; the signature only decides whether the run's code is trusted.

The key is 32 random bytes (hex) in ``$PEERLEARN_TRUST_KEY_FILE``, else
``$XDG_CONFIG_HOME/peerlearn/trust.key`` (``~/.config/peerlearn/trust.key``), created on first signature
with mode 0600 (its folder 0700). Reading never creates it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import tempfile
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from peerlearn.errors import ConfigError
from peerlearn.run_files import CHECKPOINT_NAME, CONFIG_NAME, LOCK_NAME, RUN_RECORD_NAME, SIGNATURE_NAME, SUMMARY_NAME, WEIGHTS_NAME

KEY_ENV = "PEERLEARN_TRUST_KEY_FILE"
SIGNATURE_FORMAT = 1
RECORDED_FILES = (CONFIG_NAME, RUN_RECORD_NAME, CHECKPOINT_NAME, WEIGHTS_NAME, SUMMARY_NAME)
MAX_SIGNATURE_BYTES = 64 * 1024
_SIGNED_PREFIX = b"peerlearn-run-signature-v1\n"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
TIMM_PREFIX = "timm:"
PYTHON_OBJECT_PREFIX = "python-object:"

# --trust-code / trust_code=True for the current command: everything it reads is trusted
_TRUST_CODE: ContextVar[bool] = ContextVar("peerlearn_trust_code", default=False)


@dataclass(frozen=True)
class _Scope:
    trusted: bool
    source: str
    run_dir: Optional[Path]


# what is being read right now (None: the user's own config or Python code, trusted)
_SCOPE: ContextVar[Optional[_Scope]] = ContextVar("peerlearn_trust_scope", default=None)


# --------------------------------------------------------------------------- the user's key
def key_file() -> Path:
    """Where this user's signing key lives (see the module doc)."""
    explicit = os.environ.get(KEY_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME")
    return Path(base) / "peerlearn" / "trust.key" if base else Path.home() / ".config" / "peerlearn" / "trust.key"


def _read_key(path: Path) -> bytes:
    try:
        info = path.stat()
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"Cannot read your peerlearn signing key {str(path)!r} ({error}). Fix it, or delete it "
                          "to make a new one (runs signed with the old key then need `peerlearn trust RUN_DIR`).") \
            from None
    if os.name == "posix" and (info.st_mode & 0o077 or info.st_uid != os.geteuid()):
        raise ConfigError(f"Your peerlearn signing key {str(path)!r} is readable or writable by other users (mode "
                          f"{oct(info.st_mode & 0o777)}) or owned by another user: anyone who can read it can make "
                          f"runs you would trust. Run: chmod 600 {path} (and check who changed it).")
    if not _HEX64.match(text):
        raise ConfigError(f"Your peerlearn signing key {str(path)!r} is damaged (not 64 hex digits). Delete it to make "
                          "a new one; runs signed with the old key then need `peerlearn trust RUN_DIR`.")
    return bytes.fromhex(text)


def _create_key(path: Path) -> bytes:
    """A new random key, written 0600 under a temporary name and linked into place (another process that
    creates the key at the same moment wins, and its key is used)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    finally:
        temporary.unlink(missing_ok=True)
    return _read_key(path)


def user_key(create: bool = False) -> Optional[bytes]:
    """This user's signing key; None when there is none yet and ``create`` is false."""
    try:
        path = key_file()
    except RuntimeError:  # no home folder to find
        return None
    if path.exists():
        return _read_key(path)
    return _create_key(path) if create else None


def key_id(key: bytes) -> str:
    """A short public name of a key (a hash of it), stored beside the signature to tell keys apart."""
    return hashlib.sha256(b"peerlearn-key-id\n" + key).hexdigest()[:16]


def _sign(key: bytes, hashes: dict[str, str]) -> str:
    message = _SIGNED_PREFIX + json.dumps(hashes, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- hashes of a run's files
def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``path`` as a temporary file in the same folder, fsync, rename over (a planted link is replaced,
    never followed). The engine's ``atomic_write`` does the same; this layer sits below the engine."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_signature(run_dir: Path, hashes: dict[str, str], key: Optional[bytes]) -> None:
    document = {"format": SIGNATURE_FORMAT, "hashes": dict(sorted(hashes.items())),
                "signer": key_id(key) if key is not None else None,
                "signature": _sign(key, hashes) if key is not None else None}
    _atomic_write_text(Path(run_dir) / SIGNATURE_NAME, json.dumps(document, indent=2) + "\n")


_warned_no_key = False


def _signing_key() -> Optional[bytes]:
    """The key to sign with, created if needed; None (with one warning) when it cannot be made, so that a
    training run never fails for it: its hashes are still recorded, unsigned."""
    global _warned_no_key
    try:
        return user_key(create=True)
    except (OSError, ConfigError) as error:
        if not _warned_no_key:
            _warned_no_key = True
            print(f"peerlearn: warning: runs are recorded unsigned, the signing key cannot be used ({error}); "
                  f"set {KEY_ENV} to a writable file.", file=sys.stderr)
        return None


def _own_hashes(run_dir: Path, key: Optional[bytes]) -> Optional[dict[str, str]]:
    """The recorded hashes when signature.json is this key's own and intact, else None."""
    if key is None:
        return None
    try:
        records = read_records(run_dir)
    except ConfigError:
        return None
    return dict(records.hashes) if records.signed else None


def record_files(run_dir: Union[str, Path], *names: str) -> None:
    """Record (and sign) the hashes of ``names`` after the writer replaced them; the other recorded hashes are
    kept when signature.json is this user's own, otherwise every present file is hashed again."""
    run_dir = Path(run_dir)
    key = _signing_key()
    hashes = _own_hashes(run_dir, key)
    todo = RECORDED_FILES if hashes is None else names
    hashes = hashes or {}
    for name in todo:
        path = run_dir / name
        if path.is_file():
            hashes[name] = file_sha256(path)
        else:
            hashes.pop(name, None)
    _write_signature(run_dir, hashes, key)


def sign_run(run_dir: Union[str, Path]) -> dict[str, str]:
    """Record the hashes of every present record file of ``run_dir`` as they are now and sign them with this
    user's key (``peerlearn trust RUN_DIR``): the run is then read as this user's own. Returns the hashes."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_NAME).is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a peerlearn run directory (no config.yaml).")
    key = user_key(create=True)
    hashes = {name: file_sha256(run_dir / name) for name in RECORDED_FILES if (run_dir / name).is_file()}
    _write_signature(run_dir, hashes, key)
    return hashes


# --------------------------------------------------------------------------- checking a run's files
def _trust_hint(run_dir: Path) -> str:
    return f"peerlearn trust {run_dir}"


def _run_locked(run_dir: Path) -> bool:
    """Whether a training process holds the run's lock right now (its files may be changing)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): runs are not locked either
        return False
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


@dataclass
class RunRecords:
    """The recorded hashes of a run's files and whether this user's key signed them."""

    run_dir: Path
    hashes: dict[str, str] = field(default_factory=dict)
    signed: bool = False
    checked: set = field(default_factory=set)

    def recorded(self, name: str) -> bool:
        return name in self.hashes

    def check(self, name: str) -> None:
        """Refuse (exit 2) the file ``name`` when it exists and its bytes are not the ones recorded."""
        path = self.run_dir / name
        if name in self.checked or not path.is_file():
            return
        if name not in self.hashes:
            raise ConfigError(f"The run file {str(path)!r} has no recorded hash in {SIGNATURE_NAME} (it was added or "
                              "replaced after the run recorded its files), so peerlearn cannot tell whether it is the "
                              f"run's own. Look at it; to accept it, run `{_trust_hint(self.run_dir)}`.")
        for attempt in range(8):
            if file_sha256(path) == self.hashes[name]:
                self.checked.add(name)
                return
            if attempt == 7 or not _run_locked(self.run_dir):
                break
            time.sleep(0.25)  # a training process is replacing its files: read its new records
            fresh = read_records(self.run_dir)
            self.hashes, self.signed = fresh.hashes, fresh.signed
        training = (" A training process holds the run's lock: its files change while it trains; read the run "
                    "when that has finished." if _run_locked(self.run_dir) else "")
        raise ConfigError(f"The run file {str(path)!r} does not match the SHA-256 recorded when the run wrote it "
                          f"({SIGNATURE_NAME}): it was edited or damaged since, so what it holds cannot be relied "
                          f"on.{training} Restore a good copy; if the edit is deliberate, accept it with "
                          f"`{_trust_hint(self.run_dir)}` (this records the files as they are now and trusts "
                          "the code the run names).")


def read_records(run_dir: Union[str, Path]) -> RunRecords:
    """``RUN_DIR/signature.json`` checked (exit 2 when missing, damaged or of an unknown format)."""
    run_dir = Path(run_dir)
    path = run_dir / SIGNATURE_NAME
    accept = (f"If you trust the run as it is, record its files with `{_trust_hint(run_dir)}`.")
    if not path.is_file():
        raise ConfigError(f"The run {str(run_dir)!r} has no {SIGNATURE_NAME}, the hashes of its files: it was made "
                          "by a peerlearn older than these records, or the file was removed. Nothing in it can be "
                          f"checked for edits or damage. {accept}")
    try:
        if path.stat().st_size > MAX_SIGNATURE_BYTES:
            raise ValueError(f"it has {path.stat().st_size} bytes")
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"The run's {str(path)!r} cannot be read ({error}); it is damaged. {accept}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"The run's {str(path)!r} is damaged: it holds a {type(document).__name__}, not a "
                          f"mapping. {accept}")
    version = document.get("format")
    if version != SIGNATURE_FORMAT or isinstance(version, bool):
        raise ConfigError(f"The run's {str(path)!r} has format {version!r}; this peerlearn reads format "
                          f"{SIGNATURE_FORMAT} only. Read the run with the peerlearn that made it, or, if you "
                          f"trust it, `{_trust_hint(run_dir)}`.")
    hashes, signature = document.get("hashes"), document.get("signature")
    if (not isinstance(hashes, dict) or not all(name in RECORDED_FILES and isinstance(value, str)
                                                and _HEX64.match(value) for name, value in hashes.items())
            or not (signature is None or isinstance(signature, str))):
        raise ConfigError(f"The run's {str(path)!r} is damaged: 'hashes' must map the run's files "
                          f"({', '.join(RECORDED_FILES)}) to SHA-256 hex digests and 'signature' be a hex string or "
                          f"null. {accept}")
    key = user_key(create=False) if signature else None
    signed = key is not None and hmac.compare_digest(_sign(key, hashes), signature)
    return RunRecords(run_dir, dict(hashes), signed)


def run_is_trusted(run_dir: Union[str, Path], trust_code: bool = False) -> bool:
    """Whether code named by ``run_dir`` may be imported: ``trust_code`` (or ``--trust-code`` for the current
    command), or records signed by this user's key whose run.json and config.yaml are unchanged."""
    if trust_code or _TRUST_CODE.get():
        return True
    try:
        records = read_records(run_dir)
        if not records.signed:
            return False
        for name in (RUN_RECORD_NAME, CONFIG_NAME):
            records.check(name)
    except ConfigError:
        return False
    return True


# --------------------------------------------------------------------------- code references
def needs_trust(reference: str) -> bool:
    """Whether importing ``reference`` runs code that is not peerlearn's: ``package.module:callable`` does;
    zoo names, ``timm:<name>`` and the ``python-object:`` marker (refused without importing) do not."""
    if not isinstance(reference, str) or ":" not in reference or reference.startswith(":"):
        return False
    return not reference.startswith((TIMM_PREFIX, PYTHON_OBJECT_PREFIX))


@contextlib.contextmanager
def trusting_code(enabled: bool) -> Iterator[None]:
    """While active, everything read is trusted when ``enabled`` (``--trust-code``, ``trust_code=True``)."""
    token = _TRUST_CODE.set(_TRUST_CODE.get() or bool(enabled))
    try:
        yield
    finally:
        _TRUST_CODE.reset(token)


@contextlib.contextmanager
def reading(trusted: bool, source: str, run_dir: Union[str, Path, None] = None) -> Iterator[None]:
    """While active, ``require_trusted_code(..., trusted=None)`` decides by ``trusted``: code named in
    ``source`` (a run directory, a SQL statement) is what is being read."""
    token = _SCOPE.set(_Scope(bool(trusted), source, Path(run_dir) if run_dir is not None else None))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def require_trusted_code(reference: str, where: str, trusted: Optional[bool] = None,
                         run_dir: Union[str, Path, None] = None) -> None:
    """Refuse (``ConfigError``, exit 2) to import ``reference``, read at ``where``, unless it is trusted.

    ``trusted`` None takes the answer of the enclosing ``reading`` scope (none: the user's own config or
    Python code, trusted). ``--trust-code`` (``trusting_code``) trusts everything. Call it before any
    ``importlib.import_module`` of a reference that was read."""
    require_trusted_references([(reference, where)], trusted, run_dir)


def require_trusted_references(references: Iterable[tuple[str, str]], trusted: Optional[bool] = None,
                               run_dir: Union[str, Path, None] = None, source: Optional[str] = None) -> None:
    """``require_trusted_code`` for several (reference, where) pairs, refused together in one message."""
    pending = [(ref, where) for ref, where in references if needs_trust(ref)]
    if not pending or _TRUST_CODE.get():
        return
    scope = _SCOPE.get()
    if trusted is None:
        trusted = scope is None or scope.trusted
    if trusted:
        return
    if run_dir is None and scope is not None:
        run_dir = scope.run_dir
    if source is None:
        source = scope.source if scope is not None else "what peerlearn reads"
    names = "; ".join(f"{ref!r} ({where})" for ref, where in dict.fromkeys(pending))
    if run_dir is not None:
        how = (f"this run is not signed with your key (someone else made it, or it was changed since). Look at the "
               f"run and the code it names; to trust it, run `peerlearn trust {run_dir}`, or pass --trust-code "
               "(Python: trust_code=True)")
    else:
        how = "pass --trust-code (Python: trust_code=True) if you trust it"
    raise ConfigError(f"Refusing to import code named by {source}: {names}. peerlearn imports code named by what it "
                      f"reads only when you trust it: {how}. Nothing was imported.")


def config_references(tree: object, prefix: str = "") -> list[tuple[str, str]]:
    """(reference, dotted key) of every value of a config (a plain mapping, e.g. ``RunConfig.model_dump()``
    or a parsed config.yaml) that names code: the top-level ``recipe`` and every ``model`` key at any depth
    (``members.N.model``, a recipe section's backbones or teachers), whatever section holds it."""
    if not isinstance(tree, dict):
        return []
    found = [(tree.get("recipe"), f"{prefix}recipe")]

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                path = f"{where}{key}"
                if key == "model" and isinstance(value, str):
                    found.append((value, path))
                else:
                    walk(value, f"{path}.")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}{index}.")

    walk({k: v for k, v in tree.items() if k != "recipe"}, prefix)
    return [(ref, where) for ref, where in found if isinstance(ref, str) and needs_trust(ref)]

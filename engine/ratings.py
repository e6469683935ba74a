"""Blind A/B ratings (the paper's human evaluation, Section 3.5), persisted in SQLite.

A rater hears two sets of clips for one prompt, made by two systems (e.g. "CFG γ=3" and "merged λ=0.5") and
shown in a random, hidden order, and says which set is better in quality and which is more diverse: "A", "B"
or "tie". Votes are stored against the systems, not the letters, so the order never biases the table.
Win rate of system s over t: (W + T/2) / (W + L + T); its 95 % interval is the normal interval of the
per-rating score (1 win, ½ tie, 0 loss), clipped to [0, 1].

The CSV export is safe to open in a spreadsheet: text cells that a spreadsheet would run as a formula (starting
with =, +, -, @, tab or carriage return) are prefixed with ' (OWASP's CSV-injection advice), times are ISO 8601
UTC, and raters appear only as a salted hash of their browser session (the salt is random per database and never
leaves it), so one rater's votes can be grouped without the session identifier itself being handed out.
"""
from __future__ import annotations

import csv
import hashlib
import hmac
import io
import math
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

VOTES = ("A", "B", "tie")
ASPECTS = ("quality", "diversity")
MAX_TEXT = 500
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets evaluate (OWASP, CSV injection)
EXPORT_FIELDS = ["id", "created_utc", "prompt", "seed", "system_a", "system_b", "quality", "diversity", "rater"]


INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00a0 "  # zero-width, BOM, no-break and plain spaces a spreadsheet skips


def neutralise(cell):
    """A CSV cell that no spreadsheet runs as a formula: text whose first visible character is a formula character
    (after zero-width characters, a byte-order mark or spaces, which spreadsheets skip) gets a leading '."""
    return "'" + cell if isinstance(cell, str) and cell.lstrip(INVISIBLE).startswith(FORMULA_STARTS) else cell


# Spaces' persistent storage (an upgrade a Space owner turns on): mounted here, kept across restarts, where the
# container's own disk (and ~/.local/share on it) is wiped at each restart
PERSISTENT_STORAGE = Path("/data")


def default_path() -> Path:
    """`$MUSIC_RATINGS_DB`; else Spaces' persistent storage when the machine has it (/data, writable); else the user's
    data dir: $XDG_DATA_HOME (or ~/.local/share)/cfg-distill/ratings.sqlite."""
    if os.environ.get("MUSIC_RATINGS_DB"):
        return Path(os.environ["MUSIC_RATINGS_DB"])
    if PERSISTENT_STORAGE.is_dir() and os.access(PERSISTENT_STORAGE, os.W_OK):
        return PERSISTENT_STORAGE / "cfg-distill" / "ratings.sqlite"
    root = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return root / "cfg-distill" / "ratings.sqlite"


@dataclass(frozen=True)
class PairResult:
    system: str
    opponent: str
    aspect: str
    wins: int
    losses: int
    ties: int

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def win_rate(self) -> float:
        return (self.wins + self.ties / 2) / self.n

    @property
    def ci95(self) -> tuple[float, float]:
        """Normal interval of the mean score (1 / ½ / 0); the degenerate all-equal case uses Wilson's interval."""
        n, p = self.n, self.win_rate
        var = (self.wins * (1 - p) ** 2 + self.ties * (0.5 - p) ** 2 + self.losses * p ** 2) / max(n - 1, 1)
        if var == 0:  # e.g. 3 wins of 3: no spread in the sample, but certainly not [1, 1]
            z = 1.96
            centre = (p + z * z / (2 * n)) / (1 + z * z / n)
            half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
            return max(0.0, centre - half), min(1.0, centre + half)
        half = 1.96 * math.sqrt(var / n)
        return max(0.0, p - half), min(1.0, p + half)


class RatingStore:
    """Thread-safe SQLite store of blind A/B ratings. Opens (and creates) the database at `path`."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            with self._connect() as db:
                db.execute("""CREATE TABLE IF NOT EXISTS ratings (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, prompt TEXT NOT NULL,
                    seed INTEGER, system_a TEXT NOT NULL, system_b TEXT NOT NULL,
                    quality TEXT NOT NULL, diversity TEXT NOT NULL, session TEXT)""")
                db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                db.execute("INSERT OR IGNORE INTO meta VALUES ('rater_salt', ?)", (secrets.token_hex(16),))
                self._salt = db.execute("SELECT value FROM meta WHERE key = 'rater_salt'").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise ValueError(f"{self.path}: not a usable ratings database ({e})") from None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def add(self, prompt: str, seed: int | None, system_a: str, system_b: str, quality: str, diversity: str,
            session: str = "") -> int:
        """One rating of the pair as shown (A = system_a). Returns its id."""
        for name, vote in (("quality", quality), ("diversity", diversity)):
            if vote not in VOTES:
                raise ValueError(f"{name} vote must be one of {', '.join(VOTES)}, got {vote!r}")
        if not system_a or not system_b or system_a == system_b:
            raise ValueError(f"a rating needs two different systems, got {system_a!r} and {system_b!r}")
        if len(prompt) > MAX_TEXT or len(system_a) > MAX_TEXT or len(system_b) > MAX_TEXT:
            raise ValueError(f"prompt and system names are limited to {MAX_TEXT} characters")
        with self._lock, self._connect() as db:
            cur = db.execute("INSERT INTO ratings (created, prompt, seed, system_a, system_b, quality, diversity, "
                             "session) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (time.time(), prompt, seed, system_a, system_b, quality, diversity, session))
            return int(cur.lastrowid)

    def rows(self) -> list[dict]:
        with self._lock, self._connect() as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM ratings ORDER BY id")]

    def results(self) -> list[PairResult]:
        """Win counts per (system, opponent, aspect), for both orientations of each rated pair."""
        counts: dict[tuple[str, str, str], list[int]] = {}
        for r in self.rows():
            a, b = r["system_a"], r["system_b"]
            for aspect in ASPECTS:
                vote = r[aspect]
                for me, other, mine in ((a, b, "A"), (b, a, "B")):
                    c = counts.setdefault((me, other, aspect), [0, 0, 0])
                    c[0 if vote == mine else 2 if vote == "tie" else 1] += 1
        return [PairResult(s, o, asp, *c) for (s, o, asp), c in sorted(counts.items())]

    def table(self) -> list[list]:
        """Rows for display, one per unordered pair of systems and aspect (the mirror row says the same):
        system, opponent, aspect, W, L, T, win rate, CI low, CI high."""
        return [[r.system, r.opponent, r.aspect, r.wins, r.losses, r.ties, round(r.win_rate, 3),
                 round(r.ci95[0], 3), round(r.ci95[1], 3)] for r in self.results() if r.system < r.opponent]

    def rater(self, session: str | None) -> str:
        """The exported stand-in for a session: a salted hash ('' for none)."""
        if not session:
            return ""
        return hashlib.sha256(f"{self._salt}:{session}".encode()).hexdigest()[:16]

    def browser_secret(self) -> str:
        """The key each browser's stored rater identity is sealed with (`gr.BrowserState`): derived from this
        database's salt, so the identities stay readable across restarts as long as the ratings do, and the salt
        itself never leaves the server."""
        return hmac.new(self._salt.encode(), b"browser rater identity", hashlib.sha256).hexdigest()[:32]

    def export_csv(self) -> str:
        out = io.StringIO()
        w = csv.DictWriter(out, fieldnames=EXPORT_FIELDS, quoting=csv.QUOTE_ALL)  # a ';' never splits a cell
        w.writeheader()
        for r in self.rows():
            created = datetime.fromtimestamp(r["created"], tz=timezone.utc).isoformat(timespec="seconds")
            row = dict(r, created_utc=created, rater=self.rater(r["session"]))
            w.writerow({k: neutralise(row[k]) for k in EXPORT_FIELDS})
        return out.getvalue()


TABLE_HEADERS = ["system", "vs", "aspect", "wins", "losses", "ties", "win rate", "95% CI low", "95% CI high"]

"""Fetch the jars listed in a lock file from Maven Central into a directory, checking SHA-256 sums.

    python scripts/fetch_jars.py requirements/delta-jars.lock .venv/share/delta-jars

Standard library only (it runs before anything else is installed). A jar already present with the
right checksum is kept; a download is written to a temporary name and renamed only once its checksum
matches, so an interrupted setup never leaves a truncated jar behind. MAVEN_REPO overrides the
repository URL (a mirror or a proxy of Maven Central).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import urllib.request
from pathlib import Path

REPO = os.environ.get("MAVEN_REPO", "https://repo1.maven.org/maven2").rstrip("/")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def entries(lock: Path) -> list[tuple[str, str, str, str]]:
    """(group, artifact, version, sha256) for each line of the lock."""
    out = []
    for number, line in enumerate(lock.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            coordinate, checksum = line.split()
            group, artifact, version = coordinate.split(":")
        except ValueError:
            sys.exit(f"fetch_jars: {lock}:{number}: expected 'group:artifact:version sha256', got {line!r}")
        out.append((group, artifact, version, checksum.lower()))
    return out


def fetch(url: str, target: Path, attempts: int = 3) -> None:
    partial = target.with_name(target.name + ".part")
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:
                while block := response.read(1 << 20):
                    out.write(block)
            partial.replace(target)
            return
        except OSError as exc:
            partial.unlink(missing_ok=True)
            if attempt == attempts:
                sys.exit(f"fetch_jars: cannot download {url}: {exc}")
            time.sleep(2 * attempt)


def main(lock: str, directory: str) -> None:
    dest = Path(directory)
    dest.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for group, artifact, version, checksum in entries(Path(lock)):
        name = f"{artifact}-{version}.jar"
        wanted.add(name)
        target = dest / name
        if target.is_file() and sha256(target) == checksum:
            continue
        url = f"{REPO}/{group.replace('.', '/')}/{artifact}/{version}/{name}"
        fetch(url, target)
        got = sha256(target)
        if got != checksum:
            target.unlink()
            sys.exit(f"fetch_jars: {url}: SHA-256 {got} does not match the lock's {checksum}")
        print(f"fetch_jars: {name} from {REPO} (SHA-256 checked)")
    for stale in dest.glob("*.jar"):  # a jar the lock no longer names would still be on the classpath
        if stale.name not in wanted:
            stale.unlink()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: fetch_jars.py LOCK DIRECTORY")
    main(sys.argv[1], sys.argv[2])

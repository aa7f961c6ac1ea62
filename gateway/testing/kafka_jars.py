"""Kafka broker jars from Maven Central: fetched once by `mvn` into a cache directory.

The pom next to this file (`kafka-pom.xml`) names the broker and the logging backend the
release tarball would ship; `ensure_jars` copies their runtime classpath into the cache, so that
a second run fetches nothing (Maven's own cache is ~/.m2).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

KAFKA_POM = Path(__file__).with_name("kafka-pom.xml")
REPO_ROOT = Path(__file__).resolve().parents[2]
LIBS_ENV = "SYNC_GATEWAY_KAFKA_LIBS"
"""Environment variable naming the jar cache directory (overrides the default under .cache/)."""

_MARKER = ".jars-complete"
_KAFKA_JAR_GLOB = "kafka_2.13-*.jar"


class ToolchainMissingError(RuntimeError):
    """`java` or `mvn`, needed to fetch or run the broker, is not installed."""


def kafka_version() -> str:
    """The Kafka version pinned in `kafka-pom.xml` (property ``kafka.version``)."""
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(KAFKA_POM).getroot().find("m:properties/m:kafka.version", namespace)
    if node is None or not (node.text or "").strip():
        raise RuntimeError(f"{KAFKA_POM} declares no kafka.version property")
    return (node.text or "").strip()


def default_libs_dir() -> Path:
    """Where the jars are cached: $SYNC_GATEWAY_KAFKA_LIBS, else <repo>/.cache/kafka-libs-<v>."""
    override = os.environ.get(LIBS_ENV)
    if override:
        return Path(override).expanduser().resolve()
    return REPO_ROOT / ".cache" / f"kafka-libs-{kafka_version()}"


def find_java() -> str:
    """Path of the `java` executable ($JAVA_HOME/bin/java first); ToolchainMissingError if none."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.access(Path(java_home, "bin", "java"), os.X_OK):
        return str(Path(java_home, "bin", "java"))
    java = shutil.which("java")
    if java is None:
        raise ToolchainMissingError(
            "`java` was not found on PATH: a real Kafka broker needs Java 17 or newer "
            "(Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"
        )
    return java


def _find_mvn() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ToolchainMissingError(
            "`mvn` was not found on PATH: it fetches the Kafka broker jars from Maven Central "
            "(Debian/Ubuntu: apt-get install maven)"
        )
    return mvn


def has_kafka_jars(directory: Path) -> bool:
    return directory.is_dir() and any(directory.glob(_KAFKA_JAR_GLOB))


def ensure_jars(cache_dir: Path | None = None) -> Path:
    """Return a directory holding the broker's jars, fetching them with `mvn` the first time.

    A directory holding the marker file written after a complete copy is used as is (no network).
    Otherwise `mvn dependency:copy-dependencies` copies into a temporary sibling directory, which
    is then renamed into place, so concurrent callers never see half a classpath. A directory
    someone filled by hand (it holds a kafka_2.13 jar but no marker) is used as is too.
    """
    target = (cache_dir or default_libs_dir()).expanduser().resolve()
    if (target / _MARKER).is_file():
        return target
    if has_kafka_jars(target):
        return target
    if target.is_dir() and any(target.iterdir()):
        raise RuntimeError(f"{target} exists but holds no Kafka jars; remove it and retry")
    find_java()
    mvn = _find_mvn()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        result = subprocess.run(
            [
                mvn,
                "-B",
                "-q",
                "-f",
                str(KAFKA_POM),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if result.returncode != 0 or not has_kafka_jars(staging):
            output = (result.stdout + result.stderr).strip()[-4000:]
            raise RuntimeError(
                f"`mvn dependency:copy-dependencies -f {KAFKA_POM}` failed "
                f"(exit code {result.returncode}); output:\n{output}"
            )
        jars = sorted(path.name for path in staging.glob("*.jar"))
        (staging / _MARKER).write_text("\n".join(jars) + "\n", encoding="utf-8")
        try:
            staging.rename(target)
        except OSError:
            if (target / _MARKER).is_file():  # a concurrent caller finished first
                return target
            if target.is_dir() and not any(target.iterdir()):
                target.rmdir()
                staging.rename(target)
            else:
                raise RuntimeError(
                    f"{target} exists but holds no Kafka jars; remove it and retry"
                ) from None
        return target
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)

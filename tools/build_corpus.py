"""Build the built-in model's training corpus: the stdlib plus permissively licensed pure-Python packages.

    python tools/build_corpus.py [--out .cache/corpus] [--resolve]

Each package of PACKAGES is downloaded as a wheel at its pinned version (`pip download --no-deps`, from the
configured index) and read straight from the wheel (a pure-Python wheel installs by unpacking; nothing is
executed). A package is used only if its wheel is pure Python (`py3-none-any`) and its metadata names a
licence of ALLOWED (MIT, BSD, Apache-2.0, PSF, ISC-free list below) and none of the others. Files dropped:
vendored copies (`_vendor/`, `vendored/`, `third_party/`, `extern/`), generated code (a "generated" or
"do not edit" marker near the top), data-like files (very long lines, few code lines), files over 256 KB;
then exact duplicates (normalised text) and near-duplicates (MinHash of 5-token shingles, Jaccard >= 0.8)
of any earlier file, the held-out files first, so nothing close to the held-out set is trained on.

Writes `files.jsonl` ({"source", "path", "text", "held_out"} per file, sorted by source then path) and
`manifest.json` (packages with version and licence, counts, sha256) under --out. `--resolve` ignores the
pins and prints the versions the index has today (to refresh PACKAGES).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import subprocess
import sys
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from email.parser import Parser
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_default_model import ROOT, corpus_files, read_source, stdlib_dir  # noqa: E402

log = logging.getLogger("build_corpus")

# name==version; refreshed with --resolve. Licences are read from each wheel, not trusted from here.
PACKAGES = """
    alabaster==1.0.0 alembic==1.20.1 amqp==5.4.2 anyio==4.16.0 arrow==1.4.0
    asttokens==3.0.2 attrs==26.1.0 autopep8==2.3.2 babel==2.19.0 backoff==2.2.1
    beautifulsoup4==4.15.0 billiard==4.3.2 black==26.10.1 bleach==6.4.0 blinker==1.9.0
    boltons==26.2.0 boto3==1.44.18 bottle==0.13.5 build==1.6.1 cachetools==8.0.2
    cattrs==26.2.1 celery==5.7.0 cherrypy==18.10.0 click==8.5.1 cloudpickle==3.1.3
    colorama==0.4.6 configobj==5.0.9 dataclasses-json==0.6.7 decorator==5.3.1 dill==0.4.1
    distlib==0.4.4 django==5.2.19 et-xmlfile==2.0.0 executing==2.3.0 fabric==3.2.3
    fastapi==0.165.0 feedparser==6.0.14 fire==0.7.1 flake8==7.5.0 flask==3.1.3
    flit-core==4.2.0 fsspec==2026.9.0 funcy==2.1 glom==25.12.0 gunicorn==27.0.1
    h11==0.16.0 hatchling==1.33.0 html5lib==1.1 httpcore==1.0.9 httpx==0.29.0
    humanize==4.17.0 icalendar==7.3.2 idna==3.21 importlib-metadata==10.2.0 iniconfig==2.3.1
    invoke==3.0.3 ipython==9.18.1 isort==9.0.2 itsdangerous==2.2.0 jedi==0.20.1
    jinja2==3.1.6 jmespath==1.1.0 jsonschema==4.26.0 jupyter-core==5.9.1 kombu==5.7.0
    lark==1.3.1 loguru==0.7.3 mako==1.4.3 markdown==3.11.3 markdown-it-py==4.3.0
    marshmallow==4.4.0 mccabe==0.7.0 mdurl==0.1.2 mistune==3.4.0 mock==5.2.0
    more-itertools==11.2.1 mpmath==1.4.1 nbformat==5.11.1 networkx==3.6.1 oauthlib==4.0.1
    openpyxl==3.1.5 packaging==26.4 parsimonious==0.11.0 parso==0.8.7 passlib==1.7.4
    pathspec==1.1.1 peewee==4.5.3 pip==26.3 platformdirs==4.14.9 pluggy==1.7.0
    plumbum==2.0.2 ply==3.11 poetry-core==2.5.0 portalocker==4.4.2 prettytable==3.19.0
    prompt-toolkit==3.0.53 pure-eval==0.2.4 pyasn1==0.6.5 pycodestyle==2.15.0 pycparser==3.12
    pydantic==2.14.4 pydash==8.1.0 pyflakes==4.1.0 pygments==2.21.0 pyjwt==2.15.1
    pymysql==1.2.4 pyparsing==3.3.3 pypdf==7.1.1 pyperclip==1.11.0 pyproject-hooks==1.3.3
    pyrsistent==0.20.0 pytest==9.2.0 python-dateutil==4.0.0 python-docx==1.2.0 python-dotenv==1.2.4
    python-slugify==9.2.0 pytz==2026.6 redis==8.2.0 referencing==0.37.0 requests==2.34.2
    requests-toolbelt==1.0.0 returns==0.30.0 rich==15.0.0 rsa==4.9.1 s3transfer==0.19.3
    schedule==1.2.2 schema==0.7.8 scrapy==2.19.0 setuptools==84.2.1 sh==2.4.0
    six==1.17.0 sniffio==1.3.1 sortedcontainers==2.4.0 soupsieve==4.1.4 sphinx==9.0.4
    sqlparse==0.6.1 stack-data==0.6.3 starlette==1.10.0 structlog==26.1.0 sympy==1.14.0
    tabulate==0.10.0 tenacity==9.2.1 textual==8.2.8 toml==0.10.2 tomli==2.5.0
    tomlkit==0.15.3 toolz==1.2.0 traitlets==5.16.1 trio==0.35.0 trove-classifiers==2026.9.21.13
    twisted==26.10.0 typer==0.29.2 typing-extensions==4.16.0 tzdata==2026.6 urllib3==2.8.0
    uvicorn==0.55.0 validators==0.36.0 vine==5.1.0 virtualenv==21.15.14 voluptuous==0.16.0
    wcwidth==0.9.4 webencodings==0.6.1 werkzeug==3.1.9 wheel==0.48.0 wsproto==1.3.2
    xlrd==2.0.2 xmltodict==1.0.4 zipp==4.1.2
""".split()

ALLOWED = ("MIT", "BSD", "Apache", "PSF", "Python Software Foundation")
REFUSED = ("GPL", "MPL", "Mozilla", "EPL", "Eclipse", "CDDL", "Commons Clause", "SSPL", "Proprietary")
VENDORED = {"_vendor", "vendor", "vendored", "_vendored", "third_party", "extern", "_extern"}
GENERATED = re.compile(r"generated by|auto-?generated|do not edit|automatically generated", re.I)
MAX_BYTES = 256 << 10
PACKAGE_CAP = 4_000_000  # characters per package at most (sympy, django): files in a fixed hashed order
SHINGLE, PERMS, BANDS, NEAR = 5, 64, 16, 0.8


def licence_of(meta: str) -> str:
    """The licence a wheel's METADATA states: License-Expression, classifiers, else the License field."""
    msg = Parser().parsestr(meta, headersonly=False)
    expr = msg.get("License-Expression")
    if expr:
        return expr.strip()
    classifiers = [
        c.split("::")[-1].strip() for c in msg.get_all("Classifier") or [] if c.startswith("License")
    ]
    if classifiers:
        return "; ".join(classifiers)
    return (msg.get("License") or "").strip().splitlines()[0][:80] if msg.get("License") else ""


def permitted(licence: str) -> bool:
    """Whether a licence string is only of the permissive licences this corpus takes."""
    return any(a.lower() in licence.lower() for a in ALLOWED) and not any(
        r.lower() in licence.lower() for r in REFUSED
    )


def download(spec: str, dest: Path) -> Path | None:
    """The wheel of `spec` in `dest` (downloaded once), or None when the index has no pure-Python wheel."""
    have = cached_wheel(spec, dest)
    if have:
        return have
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--platform", "any", "--python-version", "3.11", "--implementation", "py"]  # pure Python only
    done = subprocess.run([*cmd, "-d", str(dest), spec], capture_output=True, text=True)
    if done.returncode != 0:
        log.warning("%s: no wheel (%s)", spec, done.stderr.strip().splitlines()[-1:])
        return None
    return cached_wheel(spec, dest)


def cached_wheel(spec: str, dest: Path) -> Path | None:
    """A wheel of `spec` (name, and version when pinned) already in `dest`."""
    name = re.split(r"[=<>!~ ]", spec)[0].lower().replace("-", "_")
    have = [p for p in sorted(dest.glob("*.whl")) if p.name.lower().startswith(name + "-")]
    if "==" in spec:
        have = [p for p in have if p.name.split("-")[1] == spec.split("==")[1]]
    return have[0] if have else None


def wheel_files(wheel: Path) -> tuple[str, list[tuple[str, str]], dict]:
    """(licence, [(path, text)] of its .py files kept, {reason: count} of those dropped)."""
    dropped: dict[str, int] = {}
    out = []
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        licence = licence_of(z.read(meta).decode("utf-8", "replace"))
        for name in sorted(z.namelist()):
            if not name.endswith(".py") or ".dist-info/" in name:
                continue
            data = z.read(name)
            reason = drop_reason(name, data)
            if reason:
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            out.append((name, normalise(data.decode("utf-8", "replace"))))
    return licence, out, dropped


def normalise(text: str) -> str:
    """Universal newlines, no trailing white space at the end."""
    return text.replace("\r\n", "\n").replace("\r", "\n").rstrip() + "\n"


def drop_reason(path: str, data: bytes) -> str:
    """Why a file is not training data, or ''."""
    if VENDORED.intersection(path.split("/")[:-1]):
        return "vendored"
    if len(data) > MAX_BYTES:
        return "huge"
    if b"\0" in data:
        return "binary"
    text = data.decode("utf-8", "replace")
    if GENERATED.search("\n".join(text.splitlines()[:8])):
        return "generated"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "empty"
    if max(len(ln) for ln in lines) > 1000 or sum(map(len, lines)) / len(lines) > 100:
        return "data"
    return ""


def shingles(text: str) -> torch.Tensor:
    """crc32 of each run of SHINGLE tokens (identifiers, numbers, punctuation): [S] int64."""
    toks = re.findall(r"\w+|[^\w\s]", text)
    grams = {" ".join(toks[i : i + SHINGLE]) for i in range(max(1, len(toks) - SHINGLE + 1))}
    return torch.tensor(sorted(zlib.crc32(g.encode()) for g in grams), dtype=torch.int64)


def minhash(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[PERMS] minimum of (a * x + b) mod p over the shingles (a universal hash family)."""
    p = (1 << 31) - 1
    return ((a[:, None] * x[None, :] + b[:, None]) % p).amin(dim=1)


def dedupe(files: list[dict]) -> dict[str, int]:
    """Mark exact and near duplicates of an earlier file (`dup` key); returns counts by kind."""
    g = torch.Generator().manual_seed(0)
    a = torch.randint(1, (1 << 31) - 1, (PERMS,), generator=g)
    b = torch.randint(0, (1 << 31) - 1, (PERMS,), generator=g)
    exact: dict[str, str] = {}
    bands: dict[tuple, int] = {}
    sigs: list[torch.Tensor] = []
    counts = {"exact": 0, "near": 0}
    rows = PERMS // BANDS
    for i, f in enumerate(files):
        key = hashlib.sha256(re.sub(r"\s+", " ", f["text"]).encode()).hexdigest()
        sig = minhash(shingles(f["text"]), a, b)
        sigs.append(sig)
        if key in exact:
            f["dup"] = exact[key]
            counts["exact"] += 1
            continue
        exact[key] = f"{f['source']}:{f['path']}"
        near = None
        for band in range(BANDS):
            h = (band, *sig[band * rows : (band + 1) * rows].tolist())
            j = bands.get(h)
            if j is not None and near is None and (sigs[j] == sig).float().mean().item() >= NEAR:
                near = j
            bands.setdefault(h, i)
        if near is not None:
            f["dup"] = f"{files[near]['source']}:{files[near]['path']}"
            counts["near"] += 1
    return counts


def build(out: Path, wheels_dir: Path, jobs: int) -> dict:
    """Download, filter, deduplicate; write files.jsonl and manifest.json under `out`."""
    wheels_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(jobs) as pool:
        wheels = list(pool.map(lambda s: download(s, wheels_dir), PACKAGES))
    root = stdlib_dir()
    train, held = corpus_files(root)
    files = [
        {
            "source": "stdlib",
            "path": p.relative_to(root).as_posix(),
            "text": normalise(read_source(p)),
            "held_out": True,
        }
        for p in held
    ]
    files += [
        {
            "source": "stdlib",
            "path": p.relative_to(root).as_posix(),
            "text": normalise(read_source(p)),
            "held_out": False,
        }
        for p in train
    ]
    packages = []
    for spec, wheel in zip(PACKAGES, wheels, strict=True):
        row = {"package": spec.split("==")[0], "version": spec.split("==")[-1], "wheel": wheel and wheel.name}
        if wheel is None:
            packages.append(row | {"used": False, "why": "no wheel"})
            continue
        if not wheel.name.endswith("-none-any.whl"):
            packages.append(row | {"used": False, "why": "not pure Python"})
            continue
        licence, kept, dropped = wheel_files(wheel)
        row |= {"licence": licence, "dropped": dropped}
        if not permitted(licence):
            packages.append(row | {"used": False, "why": f"licence {licence!r}"})
            continue
        if sum(len(t) for _, t in kept) > PACKAGE_CAP:
            kept.sort(key=lambda pt: hashlib.sha1(pt[0].encode()).hexdigest())
            total = 0
            kept = [pt for pt in kept if (total := total + len(pt[1])) <= PACKAGE_CAP]
            kept.sort()
            row["capped"] = True
        src = f"{row['package']}=={row['version']}"
        files += [{"source": src, "path": p, "text": t, "held_out": False} for p, t in kept]
        packages.append(row | {"used": True, "files": len(kept), "chars": sum(len(t) for _, t in kept)})
    counts = dedupe(files)
    kept = [f for f in files if "dup" not in f]
    for row in packages:
        if row.get("used"):
            mine = [f for f in kept if f["source"] == f"{row['package']}=={row['version']}"]
            row |= {"files_after_dedupe": len(mine), "chars_after_dedupe": sum(len(f["text"]) for f in mine)}
    out.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with open(out / "files.jsonl.tmp", "w") as fh:
        for f in kept:
            fh.write(json.dumps(f) + "\n")
            h.update(f"{f['source']}:{f['path']}\0{f['text']}".encode())
    (out / "files.jsonl.tmp").replace(out / "files.jsonl")
    manifest = {
        "python": sys.version.split()[0],
        "sha256": h.hexdigest(),
        "files": len(kept),
        "chars": sum(len(f["text"]) for f in kept if not f["held_out"]),
        "held_out_files": sum(f["held_out"] for f in kept),
        "duplicates_dropped": counts,
        "packages": packages,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "packages.md").write_text(packages_table(manifest))
    return manifest


def packages_table(manifest: dict) -> str:
    """The model card's data table: each package used with its version, licence and characters kept."""
    used = [p for p in manifest["packages"] if p.get("used")]
    skipped = [p for p in manifest["packages"] if not p.get("used")]
    out = [
        f"Corpus sha256 `{manifest['sha256']}` (Python {manifest['python']}'s standard library plus the "
        f"packages below), {manifest['files']} files after deduplication "
        f"({manifest['held_out_files']} held out), "
        f"{manifest['chars'] / 1e6:.1f} M training characters; duplicates dropped: "
        f"{manifest['duplicates_dropped']['exact']} exact, {manifest['duplicates_dropped']['near']} near.",
        "",
        "| package | version | licence (from its wheel) | files | characters |",
        "|---|---|---|---|---|",
    ]
    files = manifest["files"] - manifest["held_out_files"] - sum(p["files_after_dedupe"] for p in used)
    chars = manifest["chars"] - sum(p["chars_after_dedupe"] for p in used)
    out.append(f"| CPython standard library | {manifest['python']} | PSF-2.0 | {files} | {chars:,} |")
    for p in used:
        capped = " (capped)" if p.get("capped") else ""
        out.append(
            f"| {p['package']} | {p['version']} | {p['licence']} | {p['files_after_dedupe']} "
            f"| {p['chars_after_dedupe']:,}{capped} |"
        )
    out += ["", "Not used: " + "; ".join(f"{p['package']} ({p['why']})" for p in skipped) + "."]
    return "\n".join(out) + "\n"


def resolve(jobs: int) -> None:
    """Print name==version of each package's newest wheel on the index (to refresh PACKAGES)."""
    names = sorted({s.split("==")[0] for s in PACKAGES} | set(sys.argv[sys.argv.index("--resolve") + 1 :]))
    tmp = ROOT / ".cache" / "corpus-resolve"

    def newest(name: str) -> str:
        wheel = download(name, tmp)
        return f"{name}=={wheel.name.split('-')[1]}  # {wheel.name}" if wheel else f"# {name}: no wheel"

    with ThreadPoolExecutor(jobs) as pool:
        for line in pool.map(newest, names):
            print(line)


def main() -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "corpus")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".cache" / "corpus-wheels")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--resolve", action="store_true")
    args, _ = parser.parse_known_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.resolve:
        resolve(args.jobs)
        return 0
    m = build(args.out, args.wheels, args.jobs)
    used = [p for p in m["packages"] if p.get("used")]
    log.info(
        "%d packages used of %d; %d files (%d held out), %.1f M training chars, duplicates dropped %s; "
        "sha256 %s",
        len(used), len(m["packages"]), m["files"], m["held_out_files"], m["chars"] / 1e6,
        m["duplicates_dropped"], m["sha256"],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# The GPU check, ready to run (docs/gpu.md). On a machine with an NVIDIA GPU and a CUDA build of
# PyTorch (any version >= 2.6), possibly without any network:
#
#   scripts/gpu_check.sh --prepare            # beforehand, on a machine with registry access:
#                                             #   the other dependencies as wheels in gpu_wheels/
#   scripts/gpu_check.sh                      # on the GPU machine (copy the checkout + gpu_wheels/)
#   scripts/gpu_check.sh --dry-run            # end to end on CPU at tiny sizes (CI; tests/test_gpu_check.py)
#   scripts/gpu_check.sh --inventory > inv.txt   # on the GPU machine: what it has, for
#   scripts/gpu_check.sh --prepare --inventory-file inv.txt   # a folder of exactly what it lacks
#
# The run installs, with --no-deps and without an index, what the GPU machine's Python lacks into
# a throw-away target folder (on PYTHONPATH; the machine's environment is not changed), states the
# torch and CUDA versions it found, then, within --budget seconds (480 = 8 minutes) in all:
#   1. the engine exactness tests (pruned model == masked reference) on the device;
#   2. `primesvt search studies/digits.toml --device cuda`, its selection compared with --device cpu;
#   3. benchmarks/bench_pruning.py on the device: Spikformer-8-512 at batch 32, prune time and
#      throughput before/after at 25/50/75% memory saving;
#   4. the same search with two worker processes sharing the one GPU.
# and writes one CSV (--out; default benchmarks/results/engine/gpu_check.csv, or a temp file in --dry-run).
# Exit status: 0 every check passed, 1 a check failed or ran out of time, 2 the set-up failed.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
MODE=run
WHEELS=$REPO/gpu_wheels
OUT=
BUDGET=480
DEVICE=
PY=${PYTHON:-}
INVENTORY=
WITH_SCIENTIFIC=0
TARGET_PY=
KEEP=0
usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; cat <<'EOF'
Options:
  --prepare                 download the wheels (needs registry access; run from the project venv)
  --inventory               print what this machine's Python has (no network; feed it to --prepare)
  --inventory-file FILE     with --prepare: download only what that machine lacks, for its Python
  --with-scientific         with --prepare: also numpy, scipy, pandas, scikit-learn (~75 MB)
  --python-version X.Y      with --prepare: wheels for another Python than the current one
  --dry-run                 CPU, tiny sizes, the current Python, a temp install target
  --python PY               the Python to use (default: $PYTHON, else python3; prepare: .venv)
  --wheels DIR              the wheel folder (default: gpu_wheels/ in the checkout)
  --out FILE                the CSV to write
  --device DEV              cuda (default), cuda:1, ... (cpu with --dry-run)
  --budget SECONDS          time for the four checks together (default 480)
  --keep                    keep the work folder (logs, databases) instead of removing it
EOF
}
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) MODE=prepare ;;
    --inventory) MODE=inventory ;;
    --dry-run) MODE=dry-run ;;
    --inventory-file) INVENTORY=$2; shift ;;
    --with-scientific) WITH_SCIENTIFIC=1 ;;
    --python-version) TARGET_PY=$2; shift ;;
    --python) PY=$2; shift ;;
    --wheels) WHEELS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --device) DEVICE=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$PY" ]; then
  if [ "$MODE" = prepare ] || [ "$MODE" = dry-run ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python; else PY=python3; fi
  else
    PY=python3
  fi
fi
command -v "$PY" >/dev/null 2>&1 || { echo "gpu_check: no Python at $PY (use --python)" >&2; exit 2; }
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORK=$(mktemp -d "${TMPDIR:-/tmp}/primesvt-gpu-check.XXXXXX")
cleanup() { if [ "$KEEP" = 1 ]; then echo "gpu_check: work folder kept: $WORK" >&2; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
HELPER=$WORK/helper.py
cat > "$HELPER" <<'PYEOF'
"""gpu_check.sh's helper: dependency manifest, install plan, environment report, step records, CSV."""
import csv, datetime, json, os, platform, re, sys, time

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
    from packaging import tags as _tags
except ImportError:  # pip vendors it
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import Version
    from pip._vendor.packaging import tags as _tags
import importlib.metadata as md

NEVER = re.compile(r"^(torch|torchvision|torchaudio|triton|pytorch-triton.*|nvidia-.*|pip|setuptools|wheel)$")
# torch's own requirements: wherever a CUDA torch runs, they are installed
WITH_TORCH = {"sympy", "mpmath", "networkx", "jinja2", "markupsafe", "filelock", "fsspec", "typing-extensions"}
# declared by the project or spikingjelly but never imported by the check (figures, TensorBoard, downloads)
UNUSED = {"matplotlib", "contourpy", "cycler", "fonttools", "kiwisolver", "pillow", "pyparsing", "scienceplots",
          "tensorboard", "absl-py", "grpcio", "markdown", "protobuf", "tensorboard-data-server", "werkzeug",
          "requests", "charset-normalizer", "idna", "urllib3", "certifi", "psycopg2-binary"}
SCIENTIFIC = {"numpy", "scipy", "pandas", "scikit-learn"}  # ~75 MB of wheels: most GPU images have them
EXTRA_ROOTS = ["pytest", "pytest-timeout"]  # the engine tests


def closure():
    """{name: (version, {specifiers asked by dependants})} of the project and pytest, from this env."""
    seen, order = {}, []

    def visit(name, extras, spec):
        n = canonicalize_name(name)
        if NEVER.match(n):
            return
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise SystemExit(f"gpu_check: {name} is not installed here; run --prepare from the project venv (make setup)")
        if n in seen:
            seen[n][1].add(spec)
            return
        seen[n] = (dist.version, {spec})
        order.append(n)
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (extras or ("",))):
                continue
            visit(req.name, tuple(req.extras), str(req.specifier))

    visit("primesvt-optuna", (), "")
    for root in EXTRA_ROOTS:
        visit(root, (), "")
    return {n: seen[n] for n in order}


def manifest(args):
    """Write the manifest of what the check needs; print the name==version lines to download."""
    out, mode, inventory = args[0], args[1], (args[2] if len(args) > 2 else "")
    have = {}
    target = {"python": f"{sys.version_info.major}.{sys.version_info.minor}", "platforms": []}
    if inventory:
        inv = json.load(open(inventory))
        have = {canonicalize_name(k): v for k, v in inv["distributions"].items()}
        target = {"python": inv["python"], "platforms": inv["platforms"]}
    needed, download, expected = [], [], []
    for name, (version, specs) in closure().items():
        if name in UNUSED or name == "primesvt-optuna":
            continue
        spec = ",".join(sorted(s for s in specs if s))
        entry = {"name": name, "version": version, "spec": spec}
        needed.append(entry)
        if inventory:
            if name in have and _satisfies(have[name], spec):
                continue
            download.append(entry)
        elif name in WITH_TORCH or (name in SCIENTIFIC and mode != "scientific"):
            expected.append(name)
        else:
            download.append(entry)
    json.dump({"created": _now(), "target": target, "needed": needed, "expected_present": expected,
               "downloaded": [e["name"] for e in download]}, open(out, "w"), indent=1)
    for e in download:
        print(f"{e['name']}=={e['version']}")


def _satisfies(version, spec):
    if not spec:
        return True
    try:
        return Requirement(f"x{spec}" if spec[0] in "<>=!~" else f"x {spec}").specifier.contains(Version(version), prereleases=True)
    except Exception:
        return False


def inventory(_args):
    dists = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name:
            dists[name] = dist.version
    platforms = []
    for tag in _tags.sys_tags():
        if tag.platform not in platforms and tag.platform != "any":
            platforms.append(tag.platform)
    print(json.dumps({"python": f"{sys.version_info.major}.{sys.version_info.minor}",
                      "implementation": sys.implementation.name, "platforms": platforms,
                      "distributions": dists}, indent=1))


def plan(args):
    """The wheels of the folder to install: distributions this Python lacks (or has in a version
    the project cannot use). Exit 3, naming them, when something needed is neither here nor there."""
    wheels, project_wheel = args[0], None
    man_path = os.path.join(wheels, "manifest.json")
    needed = json.load(open(man_path))["needed"] if os.path.exists(man_path) else [
        {"name": n, "version": v, "spec": ",".join(sorted(s for s in specs if s))}
        for n, (v, specs) in closure().items() if n not in UNUSED and n != "primesvt-optuna"]
    files = {}
    if os.path.isdir(wheels):
        for f in os.listdir(wheels):
            if f.endswith(".whl"):
                files[canonicalize_name(f.split("-")[0])] = os.path.join(wheels, f)
    install, missing = [], []
    for e in needed:
        try:
            version = md.version(e["name"])
        except md.PackageNotFoundError:
            version = None
        if version is not None and _satisfies(version, e["spec"]):
            continue
        if e["name"] in files:
            install.append(files[e["name"]])
        else:
            missing.append(f"{e['name']}{e['spec'] or ''} (found {version or 'nothing'})")
    if missing:
        print("gpu_check: this Python lacks, and the wheel folder does not hold: " + ", ".join(missing), file=sys.stderr)
        print("gpu_check: run `scripts/gpu_check.sh --inventory > inv.txt` here, then "
              "`scripts/gpu_check.sh --prepare --inventory-file inv.txt` where a registry is reachable", file=sys.stderr)
        sys.exit(3)
    for path in install:
        print(path)


def env(args):
    device = args[0]
    info = {"python": platform.python_version(), "platform": platform.platform(), "date": _now(),
            "host": platform.node(), "load_1min": round(os.getloadavg()[0], 2)}
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                cpu_threads=torch.get_num_threads())
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                    gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                    compute_capability=".".join(map(str, torch.cuda.get_device_capability(0))))
    for name in ("spikingjelly", "optuna", "primesvt-optuna", "numpy", "pandas", "scikit-learn"):
        try:
            info[name] = md.version(name)
        except md.PackageNotFoundError:
            info[name] = None
    import primesvt_optuna
    info["primesvt_optuna_path"] = os.path.dirname(primesvt_optuna.__file__)
    print(json.dumps(info))
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: --device {device} but torch {torch.__version__} sees no GPU "
              f"(torch.version.cuda = {torch.version.cuda})", file=sys.stderr)
        sys.exit(4)


def record(args):
    """Append one step record: record FILE STEP KEY VALUE OK SECONDS."""
    path, step, key, value, ok, seconds = args
    with open(path, "a") as fh:
        fh.write(json.dumps({"step": step, "key": key, "value": value, "ok": ok, "seconds": seconds}) + "\n")


def search_result(args):
    """search_result FILE.json RECORDS STEP SECONDS [REFERENCE.json]: record a search's selection."""
    path, records, step, seconds = args[:4]
    ref = args[4] if len(args) > 4 else None
    try:
        res = json.load(open(path))
    except Exception as exc:
        record([records, step, "error", f"no JSON result: {exc}", "false", seconds])
        print(f"gpu_check: {step} selected nothing (no JSON result)")
        return
    sel = res.get("selected") or {}
    rates = json.dumps(sel.get("rates"), sort_keys=True)
    rows = [("selected_rates", rates), ("accuracy", sel.get("accuracy")), ("memory_saving", sel.get("memory_saving")),
            ("both_met", res.get("both_met")), ("trials", (res.get("stats") or {}).get("trials"))]
    for key, value in rows:
        record([records, step, key, value, "", seconds])
    if ref:
        other = (json.load(open(ref)).get("selected") or {})
        same = sel.get("rates") == other.get("rates")
        record([records, step, "same_selection_as", f"{os.path.basename(ref)}: {same}", str(same).lower(), seconds])
        if not same:
            print(f"gpu_check: {step} selected {rates}, {os.path.basename(ref)} {json.dumps(other.get('rates'), sort_keys=True)}")


def bench_result(args):
    path, records, seconds = args
    with open(path) as fh:
        for row in csv.DictReader(fh):
            where = f"{row['model']}@{float(row['target_saving']):.0%}"
            for key in ("rate", "memory_saving", "prune_s", "images_per_s", "speedup", "flop_ratio",
                        "speedup_vs_flops", "flops", "input", "device"):
                record([records, "bench", f"{where}:{key}", row.get(key), "", seconds])


def pytest_result(args):
    log, records, step, seconds, rc = args
    text = open(log).read()
    summary = [l for l in text.splitlines() if re.search(r"\d+ (passed|failed|error)", l)]
    line = summary[-1].strip("= ") if summary else "no pytest summary"
    record([records, step, "summary", line, str(rc == "0").lower(), seconds])


def write_csv(args):
    records, env_path, out = args
    info = json.load(open(env_path)) if os.path.exists(env_path) else {}
    rows = [json.loads(l) for l in open(records)] if os.path.exists(records) else []
    keep = ["torch", "torch_cuda", "cudnn", "gpu", "gpu_count", "gpu_memory_gib", "python", "spikingjelly",
            "optuna", "host", "date", "load_1min"]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["step", "key", "value", "ok", "seconds", *keep])
        w.writeheader()
        for r in rows:
            w.writerow({**r, **{k: info.get(k) for k in keep}})
    print(f"gpu_check: wrote {out} ({len(rows)} rows)")


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


if __name__ == "__main__":
    {"manifest": manifest, "inventory": inventory, "plan": plan, "env": env, "record": record,
     "search": search_result, "bench": bench_result, "pytest": pytest_result, "csv": write_csv}[sys.argv[1]](sys.argv[2:])
PYEOF

# ------------------------------------------------------------------ inventory / prepare
if [ "$MODE" = inventory ]; then
  exec "$PY" "$HELPER" inventory
fi

if [ "$MODE" = prepare ]; then
  "$PY" -m pip --version >/dev/null 2>&1 || { echo "gpu_check: $PY has no pip" >&2; exit 2; }
  rm -rf "$WHEELS"; mkdir -p "$WHEELS"
  mode=default; [ "$WITH_SCIENTIFIC" = 1 ] && mode=scientific
  "$PY" "$HELPER" manifest "$WHEELS/manifest.json" "$mode" "$INVENTORY" > "$WORK/download.txt" || exit 2
  target=()
  tpy=$TARGET_PY
  if [ -n "$INVENTORY" ]; then
    tpy=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['python'])" "$INVENTORY")
    while read -r plat; do target+=(--platform "$plat"); done < <("$PY" -c \
      "import json,sys; print('\n'.join(json.load(open(sys.argv[1]))['platforms']))" "$INVENTORY")
  fi
  if [ -n "$tpy" ] && [ "$tpy" != "$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" ] \
      || [ ${#target[@]} -gt 0 ]; then
    target+=(--only-binary=:all: --python-version "$tpy" --implementation cp)
    [ -n "$INVENTORY" ] || target+=(--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64)
  fi
  echo "gpu_check: downloading $(wc -l < "$WORK/download.txt") wheels into $WHEELS"
  if [ -s "$WORK/download.txt" ]; then
    "$PY" -m pip download -q --no-deps --dest "$WHEELS" "${target[@]}" -r "$WORK/download.txt" || exit 2
  fi
  mkdir -p "$WORK/src" && cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/primesvt_optuna" "$WORK/src/"
  "$PY" -m pip wheel -q --no-deps --no-build-isolation --wheel-dir "$WHEELS" "$WORK/src" || exit 2
  size=$(du -sb "$WHEELS" | cut -f1)
  ls -1 "$WHEELS"
  echo "gpu_check: $WHEELS holds $(ls "$WHEELS"/*.whl | wc -l) wheels, $((size / 1048576)) MiB (no torch, torchvision, torchaudio, nvidia-*)"
  "$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); e=m['expected_present']; print('gpu_check: expected on the GPU machine (not downloaded): ' + (', '.join(e) or 'nothing'))" "$WHEELS/manifest.json"
  if [ "$size" -gt $((60 * 1048576)) ]; then
    echo "gpu_check: warning: more than 60 MiB to copy along" >&2
  fi
  exit 0
fi

# ------------------------------------------------------------------ the check
if [ "$MODE" = dry-run ]; then
  DEVICE=${DEVICE:-cpu}
  OUT=${OUT:-$WORK/gpu_check.csv}
  [ -d "$WHEELS" ] || WHEELS=$WORK/no-wheels
else
  DEVICE=${DEVICE:-cuda}
  OUT=${OUT:-$REPO/benchmarks/results/engine/gpu_check.csv}
fi
RECORDS=$WORK/records.jsonl
SITE=$WORK/site
STARTED=$(date +%s)
FAILED=0
say() { echo "gpu_check: $*"; }
rec() { "$PY" "$HELPER" record "$RECORDS" "$@"; }
finish() {
  rec total seconds "$(( $(date +%s) - STARTED ))" "$([ "$FAILED" = 0 ] && echo true || echo false)" "$(( $(date +%s) - STARTED ))"
  "$PY" "$HELPER" csv "$RECORDS" "$WORK/env.json" "$OUT"
  exit "$1"
}

# 0. install what this Python lacks (and the project) into a throw-away target folder
"$PY" -m pip --version >/dev/null 2>&1 || { say "$PY has no pip"; exit 2; }
t0=$(date +%s)
if ! "$PY" "$HELPER" plan "$WHEELS" > "$WORK/install.txt"; then exit 2; fi
mkdir -p "$SITE"
if [ -s "$WORK/install.txt" ]; then
  say "installing $(wc -l < "$WORK/install.txt") wheels with --no-deps into $SITE"
  xargs "$PY" -m pip install -q --no-deps --no-index --target "$SITE" < "$WORK/install.txt" || { say "pip install failed"; exit 2; }
fi
project=$(ls "$WHEELS"/primesvt_optuna-*.whl 2>/dev/null | head -1)
if [ -z "$project" ]; then  # build from a copy: setuptools would write build/ into the checkout
  mkdir -p "$WORK/src" && cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/primesvt_optuna" "$WORK/src/"
  project=$WORK/src
fi
"$PY" -m pip install -q --no-deps --no-index --no-build-isolation --target "$SITE" "$project" \
  > "$WORK/pip-project.log" 2>&1 || { cat "$WORK/pip-project.log"; say "installing the project failed"; exit 2; }
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
cd "$WORK" || exit 2   # not the checkout: primesvt_optuna is imported from the install target
if ! "$PY" "$HELPER" env "$DEVICE" > "$WORK/env.json"; then
  cat "$WORK/env.json" 2>/dev/null; exit 2
fi
"$PY" - "$WORK/env.json" "$SITE" <<'EOF' || exit 2
import json, sys
e = json.load(open(sys.argv[1]))
where = "the install target" if e["primesvt_optuna_path"].startswith(sys.argv[2]) else e["primesvt_optuna_path"]
print(f"gpu_check: torch {e['torch']} (CUDA {e['torch_cuda']}, cuDNN {e['cudnn']}), "
      f"GPU: {e.get('gpu', 'none')} x{e.get('gpu_count', 0)}, Python {e['python']}, "
      f"spikingjelly {e['spikingjelly']}, optuna {e['optuna']}, primesvt_optuna from {where}")
if not e["primesvt_optuna_path"].startswith(sys.argv[2]):
    sys.exit("gpu_check: primesvt_optuna is not imported from the install target")
EOF
rec install wheels "$(wc -l < "$WORK/install.txt") + the project" true "$(( $(date +%s) - t0 ))"

left() { echo $(( BUDGET - ($(date +%s) - STARTED) )); }
step() {  # step NAME LIMIT -- command...: run with the smaller of LIMIT and the time left
  local name=$1 limit=$2; shift 3
  local remaining; remaining=$(left)
  [ "$remaining" -lt "$limit" ] && limit=$remaining
  if [ "$limit" -le 5 ]; then
    say "$name: skipped, the ${BUDGET}s budget is spent"; rec "$name" status "skipped: budget spent" false 0; FAILED=1; return 99
  fi
  local s; s=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  STEP_SECONDS=$(( $(date +%s) - s ))
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    say "$name: timed out after ${limit}s"; rec "$name" status "timed out after ${limit}s" false "$STEP_SECONDS"; FAILED=1
  elif [ "$rc" != 0 ]; then
    say "$name: exit $rc"; tail -20 "$WORK/$name.log"; FAILED=1
  else
    say "$name: done in ${STEP_SECONDS}s"
  fi
  return "$rc"
}

if [ "$MODE" = dry-run ]; then
  TESTS=(-k "digits-tiny and (masked_reference or global_group)")
  SEARCH=(--eval-images 32 --trials 8 --accept point --recalibrate-bn 0)  # too few images to confirm: the point rule
  BENCH=(--models spikformer-8-512 --big-size 32 --big-batch 2 --repeats 1)
else
  TESTS=(-k "masked_reference or global_group")
  SEARCH=()
  BENCH=(--models spikformer-8-512 --big-batch 32 --repeats 5)
fi
CLI=("$PY" -m primesvt_optuna.cli)

# 1. engine exactness on the device
step engine_tests 150 -- env PRIMESVT_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -p no:cacheprovider \
  "$REPO/tests/test_engine.py" "${TESTS[@]}"
rc=$?; [ "$rc" = 99 ] || "$PY" "$HELPER" pytest "$WORK/engine_tests.log" "$RECORDS" engine_tests "$STEP_SECONDS" "$rc"

# 2. the search on the device, its selection compared with the CPU's
search() {  # search NAME DEVICE [REFERENCE_NAME] [more flags]: run, record the selection, compare
  local name=$1 dev=$2 ref=$3; shift 3
  step "$name" 150 -- "${CLI[@]}" search "$REPO/studies/digits.toml" --device "$dev" --json \
    --storage "sqlite:///$WORK/$name.db" --study-name "$name" "${SEARCH[@]}" "$@"
  local rc=$?
  [ "$rc" = 99 ] && return
  grep '^{' "$WORK/$name.log" | tail -1 > "$WORK/$name.json"
  "$PY" "$HELPER" search "$WORK/$name.json" "$RECORDS" "$name" "$STEP_SECONDS" \
    ${ref:+"$WORK/$ref.json"} > "$WORK/$name.compare" 2>&1
  cat "$WORK/$name.compare"
  { [ "$rc" = 0 ] && ! grep -q "selected" "$WORK/$name.compare"; } || FAILED=1
}
search search_cpu cpu ""
search search_device "$DEVICE" search_cpu

# 3. prune time and throughput on the device
step bench 150 -- "$PY" "$REPO/benchmarks/bench_pruning.py" --device "$DEVICE" --out "$WORK/bench.csv" "${BENCH[@]}"
rc=$?
if [ "$rc" = 0 ]; then "$PY" "$HELPER" bench "$WORK/bench.csv" "$RECORDS" "$STEP_SECONDS";
elif [ "$rc" != 99 ]; then rec bench status "exit $rc: $(tail -1 "$WORK/bench.log")" false "$STEP_SECONDS"; fi

# 4. two workers sharing the one GPU: it must finish and record its selection. Not compared with
# one worker's: the lazy sweep lets the second worker evaluate extra rates speculatively, so under
# a trial cap, or with the selection taken over every trial, two workers may select another (as
# good or better) configuration; that they commit the same rates is tested on CPU (test_scaleout).
search search_device_2workers "$DEVICE" "" --workers 2

if [ "$FAILED" = 0 ]; then say "all checks passed in $(( $(date +%s) - STARTED ))s"; else say "some checks failed (see $OUT)"; fi
finish "$FAILED"

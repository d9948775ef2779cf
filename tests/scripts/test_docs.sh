#!/usr/bin/env bash
# test_docs.sh BUILD_DIR -- every command in README.md and docs/*.md runs as written, so a doc
# that drifts from the code fails the suite. The rule, in full:
#
#  - Commands are the lines of ```sh blocks, and the "$ " lines of plain ``` blocks (shell
#    transcripts: the lines after one, up to the next "$ " line or the block's end, are its
#    output and must be exactly what the command prints; where they include a "..." line,
#    the others must all be printed, in any order, as with ranks' interleaved lines).
#  - Each ```sh block runs as one bash script (set -e, so every command must succeed; state
#    such as an exported variable carries to the block's next lines), with a timeout. It runs
#    in a scratch directory that holds the source tree's files (linked), `build` (the build
#    under test), and prog.c (README's first program); HOME is a scratch directory too (so
#    `--prefix "$HOME/par"` stays in it), and the build's bin/ is first on PATH (so `parrun`
#    alone is the one under test).
#  - Left out of a command (at its `&&`), and reported: installing packages (apt-get, sudo),
#    and configuring, building and testing the build under test itself (`cmake -S . -B build`,
#    `cmake --build build`, `ctest --test-dir build`), which is what made and runs this suite.
#  - A command whose comment, or the comment line just above it, says "(slow)" is started and
#    must not fail within 3 s (it is then stopped; one that finishes must exit 0): that catches
#    a wrong option or a missing program without a minutes-long run.
#  - Skipped, and reported: commands that need a cluster (--hostfile, srun); mpirun commands
#    unless mpirun is installed and the build has the mpi backend (mpirun's root and
#    oversubscription permissions are given through the environment); commands that use the
#    Python package (build/python) when the build has none (PAR_PYTHON off); and
#    docs/PERFORMANCE.md's reproduction commands (bench/compare.py and what it builds under
#    build/bench*: minutes long, and they write into build/). In a sanitizer build the whole
#    test is skipped: the documented runs would take minutes there.
set -u
B=$(cd "${1:?usage: test_docs.sh BUILD_DIR}" && pwd)
SRC=$(cd "$(dirname "$0")/../.." && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
command -v python3 >/dev/null || { echo "FAIL: python3 is needed" >&2; exit 1; }

MPI=0
if command -v mpirun >/dev/null && grep -q '^PAR_WITH_MPI:BOOL=ON' "$B/CMakeCache.txt"; then
  MPI=1
fi

# Under sanitizers the documented runs (the demo's full trainings, benchmark sweeps) take
# minutes and check nothing the sanitized suite does not; the plain builds check the docs.
if grep -q '^PAR_SANITIZE:[A-Z]*=[a-z]' "$B/CMakeCache.txt"; then
  echo "SKIP: a sanitizer build (the docs are checked by the plain builds)"
  exit 0
fi

# The scratch directory the commands run in.
W="$TMP/work"
mkdir -p "$W" "$TMP/home"
for f in "$SRC"/* "$SRC"/.[!.]*; do
  [ -e "$f" ] || continue
  case "$(basename "$f")" in build* | .git) continue ;; esac
  ln -s "$f" "$W/$(basename "$f")"
done
ln -s "$B" "$W/build"
sed -n '/^## A first program/,/^## /p' "$SRC/README.md" | sed -n '/^```c$/,/^```$/p' | sed '1d;$d' \
  >"$W/prog.c"

cd "$SRC" || exit 1
python3 - "$TMP" "$MPI" README.md docs/*.md <<'PY'
import os, re, subprocess, sys, time

tmp, mpi, files = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
python_built = os.path.isdir(os.path.join(tmp, "work", "build", "python", "par"))
work, home = os.path.join(tmp, "work"), os.path.join(tmp, "home")
bindir = os.path.join(work, "build", "bin")
env = dict(os.environ, HOME=home, PATH=bindir + os.pathsep + os.environ["PATH"],
           OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
env.pop("PKG_CONFIG_PATH", None)

DROP = [(re.compile(r"^(sudo\s+)?apt-get\b|^sudo\b"), "installs packages"),
        (re.compile(r"^cmake\s+-S\s+\.\s+-B\s+build(\s|$)"), "configures the build under test"),
        (re.compile(r"^cmake\s+--build\s+build(\s|$)"), "builds the build under test"),
        (re.compile(r"^ctest\b.*--test-dir\s+build(\s|$)"), "is this suite")]
SKIP = [(re.compile(r"--hostfile|^srun\b"), "needs a cluster"),
        (re.compile(r"bench/compare\.py|bench/plot\.py|build/bench"),
         "PERFORMANCE.md's reproduction: minutes long, writes into build/")]
if not python_built:
    SKIP.append((re.compile(r"build/python"), "the build has no Python package (PAR_PYTHON off)"))
if not mpi:
    SKIP.append((re.compile(r"^mpirun\b"), "no mpirun, or no mpi backend"))

fails, ran, notes, times = [], 0, [], []

def blocks(path):
    """Yields (kind, first line number, lines) for every fenced block."""
    lines = open(path).read().split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        kind, start, body = m.group(1), i + 1, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        yield kind, start + 1, body

def shell_command(line, where, slow_above=False):
    """The line with dropped parts left out, or None when nothing is left or it is skipped."""
    code = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
    if not code:
        return line
    for rx, why in SKIP:
        if rx.search(code):
            notes.append(f"{where}: skipped ({why}): {code}")
            return None
    parts, kept = [p.strip() for p in code.split("&&")], []
    for p in parts:
        why = next((w for rx, w in DROP if rx.search(p)), None)
        if why:
            notes.append(f"{where}: left out ({why}): {p}")
        else:
            kept.append(p)
    if not kept:
        return None
    cmd = " && ".join(kept)
    if "(slow)" in line or slow_above:
        return ("rc=0; timeout -k 3 3 bash -c %s || rc=$?; [ $rc = 0 ] || [ $rc = 124 ] || "
                "{ echo \"exit code $rc: %s\" >&2; exit 1; }") % (sh_quote(cmd), cmd.replace('"', "'"))
    return cmd

def sh_quote(s):
    return "'" + s.replace("'", "'\\''") + "'"

def run(script, where, timeout=120):
    global ran
    ran += 1
    t0 = time.time()
    try:
        p = subprocess.run(["bash", "-c", script], cwd=work, env=env, timeout=timeout,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except subprocess.TimeoutExpired:
        fails.append(f"{where}: did not finish in {timeout} s")
        return None
    times.append((time.time() - t0, where))
    if p.returncode != 0:
        tail = "\n    ".join(p.stdout.strip().split("\n")[-6:])
        fails.append(f"{where}: exit code {p.returncode}:\n    {tail}")
        return None
    return p.stdout

for path in files:
    for kind, start, body in blocks(path):
        where = f"{path}:{start}"
        if kind == "sh":
            script, joined, pending = ["set -e"], [], ""
            for line in body:  # continuation lines are one command
                if line.endswith("\\"):
                    pending += line[:-1] + " "
                    continue
                joined.append(pending + line)
                pending = ""
            heredoc, slow_above = None, False
            for line in joined:
                if heredoc:  # a here-document's lines are data, not commands
                    script.append(line)
                    if line.strip() == heredoc:
                        heredoc = None
                    continue
                m = re.search(r"<<-?\s*'?(\w+)'?", line)
                heredoc = m.group(1) if m else None
                if line.lstrip().startswith("#"):  # a comment line may mark the next command
                    slow_above = "(slow)" in line
                    continue
                cmd = shell_command(line, where, slow_above)
                slow_above = False
                if cmd is not None:
                    script.append(cmd)
            if len(script) > 1 and any(l.strip() and not l.lstrip().startswith("#")
                                       for l in script[1:]):
                run("\n".join(script), where)
        elif kind == "":
            i = 0
            while i < len(body):
                if not body[i].startswith("$ "):
                    i += 1
                    continue
                cmd, want = body[i][2:], []
                i += 1
                while i < len(body) and not body[i].startswith("$ "):
                    want.append(body[i])
                    i += 1
                got = run(cmd, f"{where}: $ {cmd}")
                if got is None:
                    continue
                got_lines = got.rstrip("\n").split("\n")
                if "..." in want:  # elided: the lines shown must all be there, in any order
                    missing = [l for l in want if l != "..." and l not in got_lines]
                    if missing:
                        fails.append(f"{where}: $ {cmd}: lines of the doc not printed:\n"
                                     f"    {missing}\n    got: {got_lines}")
                elif got_lines != want:
                    fails.append(f"{where}: $ {cmd}: the output differs from the doc:\n"
                                 f"    doc:  {want}\n    got:  {got.rstrip().split(chr(10))}")

for n in notes:
    print("note:", n)
for t, where in sorted(times, reverse=True)[:3]:
    print(f"time: {t:.1f} s {where}")
for f in fails:
    print("FAIL:", f, file=sys.stderr)
print(f"test_docs: {ran} blocks and transcripts run, {len(fails)} failed, {len(notes)} notes")
sys.exit(1 if fails else 0)
PY

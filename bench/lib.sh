# Shared helpers of the bench scripts (sourced).
# The machine is shared: before each measured run, wait until the CPUs are mostly idle
# (QUIET: idle fraction over a 2 s sample, default 0.85), at most MAXWAIT seconds (default 900).
# Each run also reports foreign_cpu_frac (CPU time other processes took during the run, as a
# fraction of wall × cores); summaries drop runs above FOREIGN_MAX when clean runs exist.
QUIET=${QUIET:-0.85}
MAXWAIT=${MAXWAIT:-900}
cpu_idle_frac() {  # idle fraction of all CPUs over $1 seconds
  local a b
  a=$(head -1 /proc/stat); sleep "${1:-2}"; b=$(head -1 /proc/stat)
  python3 - "$a" "$b" <<'PY'
import sys
a = [float(x) for x in sys.argv[1].split()[1:9]]
b = [float(x) for x in sys.argv[2].split()[1:9]]
d = [y - x for x, y in zip(a, b)]
print('%.3f' % ((d[3] + d[4]) / max(1e-9, sum(d))))
PY
}
wait_quiet() {
  local start=$SECONDS idle
  while :; do
    idle=$(cpu_idle_frac 2)
    if python3 -c "import sys; sys.exit(0 if $idle >= $QUIET else 1)"; then return 0; fi
    if (( SECONDS - start > MAXWAIT )); then
      echo "   (machine still busy after ${MAXWAIT}s, idle $idle: running anyway)" >&2
      return 0
    fi
    sleep 5
  done
}

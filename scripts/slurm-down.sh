#!/usr/bin/env bash
# Stop the daemons scripts/slurm-up.sh started, by their PIDs, in reverse order.
RUN_DIR=${RUN_DIR:-/run/slurm-test}
for d in slurmd slurmctld slurmdbd mariadbd munged; do
  f="$RUN_DIR/$d.pid"; [ -f "$f" ] || continue; p=$(cat "$f")
  if kill "$p" 2>/dev/null; then for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done; fi
  kill -0 "$p" 2>/dev/null && echo "$d ($p) still running" || echo "$d ($p) stopped"; rm -f "$f"
done

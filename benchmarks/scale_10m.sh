#!/bin/bash
# The 10M-file memory run of issue 15: peak RSS of `backup run` (a full, then a no-change
# incremental) over ten million tiny files (bench_scale.make_tiny_tree, 16-200 bytes each).
#
#   sudo bash benchmarks/scale_10m.sh [WORKDIR]     (default /var/tmp/backup-10m)
#
# The tree goes on an ext4 filesystem in a loop file made with 512-byte inodes and
# inline_data, so every file's bytes live in its inode and the whole tree (~6 GB of inode
# tables) stays in the page cache: on a plain filesystem a 10M-file full reads cold at
# ~3,000 files a second here (an hour), and deleting the tree afterwards takes half an hour;
# here the full takes minutes and cleaning up is `umount` and `rm` of one file. This is a
# memory benchmark: the filesystem changes the speed, not what the process holds.
# The vault and the inventory stay on WORKDIR's own filesystem. Needs root (mount -o loop).
# Every run copies the inventory into the target (BACKUP_INVENTORY_EXPORT_INTERVAL=0), the
# step that held the whole packed file index before 0303e8a.
# Output: WORKDIR/{full,nochange}.time (wall, CPU, ru_maxrss) and .rss (VmRSS/VmHWM every
# 20 s). Remove with: umount WORKDIR/mnt && rm -r WORKDIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
work=${1:-/var/tmp/backup-10m}
files=${BACKUP_BENCH_FILES:-10000000}
py=${PYTHON:-$repo/.venv/bin/python}
backup=${BACKUP:-$repo/.venv/bin/backup}
mkdir -p "$work/mnt" "$work/vault"
if ! mountpoint -q "$work/mnt"; then
  if [ ! -e "$work/fs.img" ]; then
    truncate -s 12G "$work/fs.img"
    mkfs.ext4 -q -F -b 4096 -I 512 -O inline_data -N $((files + files / 10 + 100000)) -m 0 "$work/fs.img"
  fi
  mount -o loop,noatime "$work/fs.img" "$work/mnt"
fi
tree="$work/mnt/tiny-$files"
if [ ! -e "$work/mnt/tiny-$files.done" ]; then
  t0=$(date +%s)
  "$py" -c "
import sys; sys.path.insert(0, '$here')
from pathlib import Path
import bench_scale
bench_scale.make_tiny_tree(Path('$tree'), $files, resume=True)"
  touch "$work/mnt/tiny-$files.done"
  echo "tree of $files files made in $(($(date +%s) - t0)) s"
fi
[ -e "$work/key.txt" ] || age-keygen -o "$work/key.txt" 2>/dev/null
cat > "$work/policy.toml" <<EOF
[[policy]]
name = "scale"
sources = ["$tree"]
target = "file://$work/vault"
recipients = ["$(age-keygen -y "$work/key.txt")"]
full_every = "7d"
EOF
export BACKUP_CONFIG="$work/policy.toml" BACKUP_INVENTORY_URL="sqlite:///$work/inventory.db"
export BACKUP_IDENTITY="$work/key.txt" BACKUP_INVENTORY_EXPORT_INTERVAL=0
"$py" -m compileall -q "$repo/backup" >/dev/null || true
for op in full nochange; do
  flags=()
  [ "$op" = full ] && flags=(--full)
  rm -f "$work/$op.rss"
  /usr/bin/time -f "$op wall %e s user %U s sys %S s maxrss %M KiB" -o "$work/$op.time" \
    "$backup" run scale --json "${flags[@]}" >"$work/$op.json" 2>"$work/$op.err" &
  sleep 2
  pid=$(pgrep -n -f "bin/backup run scale" || true)
  while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; do
    echo "$(date +%T) $(grep -E 'VmRSS|VmHWM' "/proc/$pid/status" 2>/dev/null | tr -s ' \n' ' ')" >>"$work/$op.rss"
    sleep 20
  done
  wait
  cat "$work/$op.time"
done

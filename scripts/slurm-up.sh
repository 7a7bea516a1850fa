#!/usr/bin/env bash
# Start a single-node Slurm 22.05 cluster with accounting (slurmdbd + MariaDB) on this machine,
# as root, without systemd or cgroups: the recipe verified in shared/SETUP-NOTES.md (30-slurm-up.sh),
# made idempotent. Used by scripts/test.sh for the Slurm integration tests; stop it with
# scripts/slurm-down.sh. SLURM_CPUS (default 4) CPUs are declared so that 4 one-CPU tasks fit on
# 2 cores. MaxArraySize=4, so that sweeps of more trials are split into several arrays.
# Does nothing when a cluster already answers.
set -euo pipefail
export SLURM_CPUS=${SLURM_CPUS:-4}
if command -v sinfo >/dev/null 2>&1 && scontrol ping >/dev/null 2>&1 && sinfo -h -o %t 2>/dev/null | grep -qx idle; then
  echo "slurm: already up"; sinfo; exit 0
fi
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmdbd >/dev/null 2>&1 || ! command -v mariadbd >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
fi
RUN_DIR=${RUN_DIR:-/run/slurm-test}
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q slurm-wlm munge slurmdbd mariadb-server   # postinst may print "policy-rc.d denied execution of start": expected
mkdir -p "$RUN_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /etc/slurm
H=$(hostname -s)
MEM=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p'); MEM=$((MEM * 9 / 10))
NCPU=${SLURM_CPUS:-$(nproc)}   # e.g. SLURM_CPUS=4 to allow 4 one-CPU tasks on a 2-core machine

cat > /etc/slurm/slurm.conf <<CONF
# single-node test cluster: everything as root, no systemd, no cgroups
ClusterName=testcluster
SlurmctldHost=$H
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
MinJobAge=300
# arrays of at most 4 elements (indices 0-3): the sweep executor's splitting of larger arrays is tested for real
MaxArraySize=4
# accept a NodeName line that differs from the hardware (SLURM_CPUS > real cores)
SlurmdParameters=config_overrides
NodeName=$H CPUs=$NCPU RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF

cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmdbpass
StorageLoc=slurm_acct_db
CONF
chmod 600 /etc/slurm/slurmdbd.conf

wait_for() { local what=$1; shift; for _ in $(seq 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "timeout waiting for $what" >&2; return 1; }

# 1. munge (key made by the munge package's postinst; create one if missing)
[ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024; }
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge; chown munge:munge /run/munge /var/log/munge /var/lib/munge
setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F > /var/log/munge/munged.out 2>&1 &
echo $! > "$RUN_DIR/munged.pid"
wait_for munged bash -c 'munge -n | unmunge'

# 2. MariaDB on its Unix socket only (no TCP port), then the accounting DB user
mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
/usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock --skip-networking \
    --innodb-buffer-pool-size=1G --innodb-lock-wait-timeout=900 > /var/log/slurm/mariadbd.out 2>&1 &
echo $! > "$RUN_DIR/mariadbd.pid"
wait_for mariadbd mariadb -e 'select 1'
mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmdbpass';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

# 3. slurmdbd, register the cluster, then slurmctld and slurmd (all in the foreground mode -D, backgrounded)
slurmdbd -D > /var/log/slurm/slurmdbd.out 2>&1 &
echo $! > "$RUN_DIR/slurmdbd.pid"
wait_for slurmdbd sacctmgr -n show cluster
sacctmgr -i add cluster testcluster >/dev/null 2>&1 || true   # "already exists" on a re-run
slurmctld -D > /var/log/slurm/slurmctld.out 2>&1 &
echo $! > "$RUN_DIR/slurmctld.pid"
wait_for slurmctld scontrol ping
slurmd -D > /var/log/slurm/slurmd.out 2>&1 &
echo $! > "$RUN_DIR/slurmd.pid"
wait_for "node idle" bash -c '[ "$(sinfo -h -o %t)" = idle ]'
sinfo

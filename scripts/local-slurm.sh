#!/usr/bin/env bash
# A single-node SLURM cluster and an sshd on 127.0.0.1, private to one folder.
#
# Why: the SLURM-over-SSH job backend is tested and benchmarked against a real cluster,
# started by hand (no systemd) so it works in containers and CI. Nothing outside DIR is
# touched except installing the Debian packages when they are missing (root only).
#
#   scripts/local-slurm.sh install          # apt-get the packages if missing
#   scripts/local-slurm.sh up DIR [CPUS]    # start munged, slurmctld, slurmd, sshd
#   scripts/local-slurm.sh down DIR         # stop what `up` started in DIR
#   scripts/local-slurm.sh sshd-stop DIR    # an outage: stop sshd and its open sessions
#   scripts/local-slurm.sh sshd-start DIR   # ... and start it again on the same port
#   scripts/local-slurm.sh ctld-stop DIR    # a scheduler outage: stop slurmctld (jobs run on)
#   scripts/local-slurm.sh ctld-start DIR   # ... and start it again from its saved state
#
# `up` writes DIR/cluster.env (SSH_PORT, SSH_USER, SSH_KEY, SSH_HOST_KEY, SLURM_CONF,
# WORK_DIR) for the caller, and prints it.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge openssh-server)

die() { echo "local-slurm: $*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cmd_install() {
  local missing=()
  for bin in slurmctld slurmd sbatch munged sshd; do
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("$bin")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get"
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; installing needs root"
  echo "local-slurm: installing ${PACKAGES[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1 \
    || { apt-get update >/dev/null 2>&1 && \
         apt-get install -y --no-install-recommends "${PACKAGES[@]}" >/dev/null; } \
    || die "apt-get install ${PACKAGES[*]} failed"
}

wait_for() {  # wait_for SECONDS COMMAND...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

cmd_up() {
  local dir=${1:?usage: up DIR [CPUS]} cpus=${2:-64}
  [ "$(id -u)" -eq 0 ] || die "starting slurmd/sshd needs root"
  cmd_install
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  mkdir -p "$dir"/{etc,log,run,state,spool,ssh,work}
  # munged runs as user munge, which must reach its folder: DIR's parents may be private
  # (pytest's tmp folders are), so munge state lives in its own folder under /tmp.
  local mdir
  mdir=$(mktemp -d /tmp/lr-munge-XXXXXX)
  chmod 755 "$mdir"
  ln -sfn "$mdir" "$dir/munge"
  local user ctld_port slurmd_port ssh_port
  user=$(id -un)
  ctld_port=$(free_port); slurmd_port=$(free_port); ssh_port=$(free_port)

  # munge: a private key and socket, run as the munge user (munged refuses root).
  local key="$mdir/munge.key"
  if [ -r /etc/munge/munge.key ]; then cp /etc/munge/munge.key "$key"
  else mungekey --create --keyfile="$key" >/dev/null; fi
  chown -R munge:munge "$mdir"; chmod 400 "$key"
  runuser -u munge -- /usr/sbin/munged --socket="$mdir/munge.sock" \
    --key-file="$key" --pid-file="$mdir/munged.pid" \
    --log-file="$mdir/munged.log" --seed-file="$mdir/munged.seed"
  wait_for 10 test -S "$mdir/munge.sock" || die "munged did not start"

  cat >"$dir/etc/slurm.conf" <<EOF
ClusterName=lrlocal
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$mdir/munge.sock
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerNode=100000
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
# --mem enforced without cgroups: slurmstepd kills a job over its limit (its log says
# "exceeded memory limit"); jobs without --mem get DefMemPerNode, far above real use.
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
MinJobAge=86400
KillWait=5
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SlurmdParameters=config_overrides
MailProg=/bin/true
ReturnToService=2
NodeName=localnode NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=10000000 State=UNKNOWN
PartitionName=debug Nodes=localnode Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF="$dir/etc/slurm.conf"
  /usr/sbin/slurmctld -i -f "$SLURM_CONF"
  /usr/sbin/slurmd -N localnode -f "$SLURM_CONF"
  wait_for 30 bash -c 'sinfo -h -o %T | grep -q -E "^idle"' \
    || die "node did not become idle (see $dir/log)"

  # sshd: own host key, client key and authorized keys; ~/.ssh is left alone.
  ssh-keygen -q -t ed25519 -N '' -f "$dir/ssh/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$dir/ssh/client_key"
  cp "$dir/ssh/client_key.pub" "$dir/ssh/authorized_keys"
  chmod 600 "$dir/ssh/authorized_keys"
  mkdir -p /run/sshd
  cat >"$dir/ssh/sshd_config" <<EOF
Port $ssh_port
ListenAddress 127.0.0.1
HostKey $dir/ssh/host_key
AuthorizedKeysFile $dir/ssh/authorized_keys
PidFile $dir/run/sshd.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
MaxStartups 200
MaxSessions 200
# One line per connection and per remote command: what benchmarks/fanout_slurm.py counts.
LogLevel VERBOSE
SetEnv SLURM_CONF=$SLURM_CONF
EOF
  start_sshd "$dir" "$ssh_port" "$user"

  cat >"$dir/cluster.env" <<EOF
SSH_HOST=127.0.0.1
SSH_PORT=$ssh_port
SSH_USER=$user
SSH_KEY=$dir/ssh/client_key
SSH_HOST_KEY="$(cut -d' ' -f1,2 "$dir/ssh/host_key.pub")"
SLURM_CONF=$SLURM_CONF
WORK_DIR=$dir/work
EOF
  cat "$dir/cluster.env"
}

start_sshd() {  # start_sshd DIR PORT USER
  local dir=$1 port=$2 user=$3
  /usr/sbin/sshd -f "$dir/ssh/sshd_config" -E "$dir/log/sshd.log"
  wait_for 10 ssh -i "$dir/ssh/client_key" -p "$port" -o BatchMode=yes \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "$user@127.0.0.1" true \
    || die "sshd did not accept the client key (see $dir/log/sshd.log)"
}

cmd_sshd_stop() {  # the listener and every session it forked (by their process ids)
  local dir=${1:?usage: sshd-stop DIR} pid child
  [ -f "$dir/run/sshd.pid" ] || return 0
  pid=$(cat "$dir/run/sshd.pid")
  for child in $(pgrep -P "$pid" || true); do kill "$child" 2>/dev/null || true; done
  stop_pidfile "$dir/run/sshd.pid"
  rm -f "$dir/run/sshd.pid"
}

cmd_ctld_stop() {
  local dir=${1:?usage: ctld-stop DIR}
  stop_pidfile "$dir/run/slurmctld.pid"
  rm -f "$dir/run/slurmctld.pid"
}

cmd_ctld_start() {
  local dir=${1:?usage: ctld-start DIR}
  export SLURM_CONF="$dir/etc/slurm.conf"
  /usr/sbin/slurmctld -f "$SLURM_CONF"
  wait_for 30 scontrol ping || die "slurmctld did not come back (see $dir/log)"
}

cmd_sshd_start() {
  local dir=${1:?usage: sshd-start DIR} port
  port=$(sed -n 's/^SSH_PORT=//p' "$dir/cluster.env")
  start_sshd "$dir" "$port" "$(id -un)"
}

stop_pidfile() {
  local pidfile=$1 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

cmd_down() {
  local dir=${1:?usage: down DIR}
  [ -d "$dir" ] || return 0
  if [ -f "$dir/etc/slurm.conf" ] && [ -f "$dir/run/slurmctld.pid" ]; then
    SLURM_CONF="$dir/etc/slurm.conf" timeout 10 scancel --full --user="$(id -un)" \
      >/dev/null 2>&1 || true
  fi
  stop_pidfile "$dir/run/sshd.pid"
  stop_pidfile "$dir/run/slurmd.pid"
  stop_pidfile "$dir/run/slurmctld.pid"
  stop_pidfile "$dir/munge/munged.pid"
  if [ -L "$dir/munge" ]; then
    rm -rf "$(readlink "$dir/munge")"
    rm -f "$dir/munge"
  fi
}

case "${1:-}" in
  install) cmd_install ;;
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  sshd-stop) shift; cmd_sshd_stop "$@" ;;
  sshd-start) shift; cmd_sshd_start "$@" ;;
  ctld-stop) shift; cmd_ctld_stop "$@" ;;
  ctld-start) shift; cmd_ctld_start "$@" ;;
  *) echo "usage: $0 install | up DIR [CPUS] | down DIR | sshd-stop|sshd-start DIR" \
          "| ctld-stop|ctld-start DIR" >&2
     exit 2 ;;
esac

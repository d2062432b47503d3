# shellcheck shell=bash
# Helpers shared by the tpu/ scripts; sourced by each of them, not run on its own:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# The sourcing script sets `prog` (its name in messages) and sets dry_run=1 for --dry-run.

# Prints "PROG: MESSAGE" and a pointer to --help on stderr, and exits with status 2.
die() {
  # shellcheck disable=SC2154  # prog is set by the sourcing script
  printf '%s: %s\n' "$prog" "$*" >&2
  printf "Run '%s --help' for usage.\n" "$prog" >&2
  exit 2
}

# Prints its arguments as one shell-quoted line that can be pasted back into a shell.
quote() {
  local out="" arg q="'\\''"
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      out+="$arg "
    elif [[ "$arg" =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
      arg=${BASH_REMATCH[2]}
      out+="${BASH_REMATCH[1]}'${arg//\'/$q}' "
    else
      out+="'${arg//\'/$q}' "
    fi
  done
  printf '%s\n' "${out% }"
}

# Runs its arguments as a command, or with --dry-run prints them (quoted) instead.
dry_run=0
run() {
  if ((dry_run)); then
    quote "$@"
  else
    "$@"
  fi
}

# In an argument loop: dies unless the flag $1 is followed by a value (non-empty, not a flag).
need_value() {  # FLAG [VALUE...]
  [[ $# -ge 2 && -n "$2" && "$2" != -* ]] || die "$1 needs a value"
}

# Dies unless COMMAND is on PATH; skipped with --dry-run, which runs nothing.
need_command() {  # COMMAND HINT
  if ! ((dry_run)); then
    command -v "$1" >/dev/null || die "$1 not found ($2)"
  fi
}

# Dies unless each --config.KEY=VALUE override is well formed and leaves distributed.* alone.
check_overrides() {  # OVERRIDE...
  local o
  for o in "$@"; do
    [[ "$o" =~ ^--config\.[A-Za-z0-9_.]+=.* ]] || die "bad override '$o' (want --config.KEY=VALUE)"
    [[ "$o" != --config.distributed.* ]] \
      || die "distributed.* is set by this script; drop '$o'"
  done
}

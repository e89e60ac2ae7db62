# Kaldi-style option parsing, sourced after the defaults are set:
#   --name value / --name=value sets the existing shell variable "name" (dashes -> underscores);
#   --help or -h prints the output of the caller's usage() function when it defines one (it runs then, so it shows
#   the values of the options parsed before --help: a recipe's run.sh passes its own before "$@"), else
#   $help_message. Unknown options are errors. Remaining args stay in "$@".
while true; do
  [ -z "${1:-}" ] && break
  case "$1" in
    --help|-h) if declare -F usage >/dev/null; then usage; else echo "${help_message:-no help available}"; fi
               exit 0 ;;
    --*=*) _name=${1%%=*}; _name=${_name#--}; _name=${_name//-/_}; _val=${1#*=}; _n=1 ;;
    --*) _name=${1#--}; _name=${_name//-/_}; _val=${2-}; _n=2
         [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 1; } ;;
    *) break ;;
  esac
  if ! declare -p "$_name" >/dev/null 2>&1 || [[ "$_name" =~ [^A-Za-z0-9_] ]]; then
    echo "$0: invalid option --${_name} (see --help)" >&2; exit 1
  fi
  printf -v "$_name" '%s' "$_val"
  shift $_n
done
unset _name _val _n

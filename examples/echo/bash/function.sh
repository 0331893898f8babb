# The handler function.sh's "handler": echo the event back.
handler() {
  echo "$1"
}

# The tutorial's handler: logs the event to stderr and answers with it,
# wrapped so the test can tell the handler ran.
function handler () {
  EVENT_DATA=$1
  echo "$EVENT_DATA" 1>&2
  echo "{\"echo\": $EVENT_DATA}"
}

# Shared by the example images: read one scalar from /parameters.json, which kliko-async writes
# with sorted keys, two-space indent and one key per line. Usage: value=$(param NAME)
param() {
    sed -n "s/^  \"$1\": //p" /parameters.json | sed 's/,$//; s/^"//; s/"$//'
}

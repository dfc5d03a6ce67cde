#!/bin/sh
# An ENTRYPOINT wrapper as images often have: it announces itself, then runs its arguments.
# Kliko 0.8 keeps an image's ENTRYPOINT, so its arguments are the command /kliko.
set -eu
echo "entrypoint: exec $*"
echo "$*" > /output/entrypoint-ran
exec "$@"

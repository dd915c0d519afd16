#!/bin/sh
# Entrypoint of the kOS node image (Dockerfile and deploy/local-images.sh use the same one).
#
# On the first start the config directory ($KOS_HOME, a volume) has no profile: lay it out
# with `kos init --profile $KOS_PROFILE` (default federation_node), which also creates the
# node's identity key and its token key there, so `kos id` and every issued token survive
# restarts and image upgrades. Later starts keep everything that exists (`kos init` never
# overwrites); then KOS_PROFILE, when set, only picks the active profile as usual.
set -eu

: "${KOS_HOME:=/var/lib/kos}"
export KOS_HOME

if [ "$#" -eq 0 ]; then
  set -- run
fi

if [ "$1" = run ] && ! ls "$KOS_HOME"/profiles/*.yaml >/dev/null 2>&1; then
  kos init --profile "${KOS_PROFILE:-federation_node}"
fi

exec kos "$@"

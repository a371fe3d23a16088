# Shared by the bench-*.sh scripts (sourced, not run): the 1080p15 test source and one
# fakecam fleet serving it.

# bench_source ROOT CACHE: sets SRC to a 1080p15 source with real detail (vtest.avi scaled
# up with film grain, made once under CACHE); fakecam transcodes it once more to the GOP
# and bitrate asked for. vtest.avi: $STOREGUARD_MEDIA if set, else ROOT/local/media.
bench_source() {
    SRC=$2/vtest-1080p15-grain.mp4
    [[ -s $SRC ]] && return
    local vtest=${STOREGUARD_MEDIA:-$1/local/media}/vtest.avi
    [[ -f $vtest ]] || { echo "no $vtest: run scripts/setup.sh media (or set STOREGUARD_MEDIA)" >&2; exit 1; }
    echo "making $SRC (once)..." >&2
    ffmpeg -nostdin -loglevel error -y -i "$vtest" \
        -t 40 -vf "scale=1920:1080,fps=15,noise=alls=12:allf=t" -c:v libx264 -preset ultrafast \
        -crf 20 -an "$SRC.tmp.mp4"
    mv "$SRC.tmp.mp4" "$SRC"
}

# start_fakecam BIN WORK CACHE COUNT: COUNT cameras of SRC at 15 fps, 2 s GOP, 3 Mbit/s.
# Sets FC_PID, FC_IN (fakecam quits when this pipe to its stdin closes) and PORT.
start_fakecam() {
    local bin=$1 work=$2 cache=$3 n=$4
    mkfifo "$work/fc.in"
    "$bin/fakecam" --port 0 --cameras "$n" --fps 15 --gop 30 --bitrate 3000 \
        --source "$SRC" --cache-dir "$cache" <"$work/fc.in" >"$work/fc.out" 2>"$work/fc.err" &
    FC_PID=$!
    exec {FC_IN}>"$work/fc.in"
    for _ in $(seq 1 1200); do
        grep -q READY "$work/fc.out" 2>/dev/null && break
        kill -0 "$FC_PID" 2>/dev/null || { cat "$work/fc.err" >&2; echo "fakecam exited" >&2; exit 1; }
        sleep 0.5
    done
    PORT=$(sed -n 's/^READY rtsp:\/\/127.0.0.1:\([0-9]*\)\/.*/\1/p' "$work/fc.out")
    [[ -n $PORT ]] || { echo "fakecam not ready" >&2; exit 1; }
}

# bench_cleanup PID...: stops the PIDs and fakecam, removes WORK (for `trap … EXIT`).
bench_cleanup() {
    for p in "$@"; do kill "$p" 2>/dev/null || true; done
    [[ -n ${FC_PID:-} ]] && kill "$FC_PID" 2>/dev/null || true
    [[ -n ${FC_IN:-} ]] && exec {FC_IN}>&- 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}

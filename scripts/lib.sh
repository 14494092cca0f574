# Shared helpers for the install scripts (sourced, not run).

# apt_ensure PKG...: install the Debian packages that are missing; nothing when all are present.
apt_ensure() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "install: missing Debian packages ${missing[*]}; run as root or install them" >&2
        return 1
    fi
    echo "install: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# swap_in STAGE DEST: replace directory DEST by STAGE at once, so a concurrent reader never sees
# half a set of tools.
swap_in() {
    mkdir -p "$(dirname "$2")"
    rm -rf "$2.old"
    if [ -e "$2" ]; then mv "$2" "$2.old"; fi
    mv "$1" "$2"
    rm -rf "$2.old"
}

# go_toolchain: sets GO to the Go command (PATH, then /usr/local/go/bin) and exports the build
# environment every tool build here shares: static binaries, no VCS stamps, 2 packages at a time.
go_toolchain() {
    GO=$(command -v go || echo /usr/local/go/bin/go)
    [ -x "$GO" ] || { echo "install: no Go toolchain (looked in PATH and /usr/local/go/bin)" >&2; return 1; }
    export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-p=2 -trimpath -buildvcs=false"
}

# k8s_build GO WORKDIR VERSION DEST CMD...: builds k8s.io/kubernetes/cmd/CMD at VERSION into DEST.
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces the k8s.io/* staging modules by
# local paths. So a throwaway wrapper module in WORKDIR requires it and replaces each staging
# module by its published v0.<minor>.<patch> twin; the list of staging modules is read from that
# go.mod, so it is right for whichever version is pinned. The version is stamped the way the
# release build does it, so `--version` and the apiserver's /version report it.
k8s_build() {
    local go=$1 mod=$2 version=$3 dest=$4
    shift 4
    local minor=${version#*.} staging ldflags="-s -w" pkg cmd pkgs=()
    minor=${minor%%.*}
    mkdir -p "$mod" "$dest"
    (
        cd "$mod"
        [ -e go.mod ] || "$go" mod init vmlease.invalid/k8s-tools >/dev/null 2>&1
        "$go" mod download k8s.io/kubernetes@"v$version"
        staging=$("$go" mod download -json k8s.io/kubernetes@"v$version" \
            | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' \
            | xargs sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => \./staging/.*#\1#p')
        [ -n "$staging" ] || { echo "install: no staging replaces in k8s.io/kubernetes v$version" >&2; exit 1; }
        for m in $staging; do
            "$go" mod edit -replace "$m=$m@v0.${version#*.}"
        done
        for cmd in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$cmd@v$version"); done
        echo "install: k8s.io/kubernetes v$version: resolving modules ($(wc -w <<<"$staging") staging replaces)"
        "$go" get "${pkgs[@]}"
        for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
            ldflags+=" -X $pkg.gitVersion=v$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
            ldflags+=" -X $pkg.gitTreeState=clean"
        done
        for cmd in "$@"; do
            echo "install: building $cmd v$version"
            "$go" build -ldflags "$ldflags" -o "$dest/$cmd" "k8s.io/kubernetes/cmd/$cmd"
        done
    )
}

# go_module_build GO WORKDIR PACKAGE VERSION OUT [LDFLAGS]: builds the command PACKAGE of its
# module at VERSION through a throwaway wrapper module (the module's own replaces stay out of it).
go_module_build() {
    local go=$1 mod=$2 pkg=$3 version=$4 out=$5 ldflags=${6:-}
    mkdir -p "$mod"
    (
        cd "$mod"
        [ -e go.mod ] || "$go" mod init "vmlease.invalid/tools/$(basename "$mod")" >/dev/null 2>&1
        "$go" get "$pkg@$version"
        "$go" build -ldflags "-s -w $ldflags" -o "$out" "$pkg"
    )
}

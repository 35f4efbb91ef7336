#!/usr/bin/env bash
# Fetches the photos of the region-search evaluation (bench/evalset.py, docs/evaluation.md)
# into DIR, without root and without changing the system: each Debian package is fetched with
# `apt-get download` and unpacked with `dpkg-deb -x` into DIR/tmp, only the listed photos are
# copied to DIR/photos, and DIR/manifest.tsv records each one's source package, version,
# licence and sha256. Each package's copyright file is kept in DIR/licences, and every stated
# licence is checked against it.
#
#   scripts/eval-photos.sh ~/.cache/image-search-eval
#
# The package lists of the system are used when they know the pinned versions; otherwise a
# private `apt-get update` goes to DIR/apt (no root needed). Each photo's sha256 is checked, so
# the set is the one the figures in docs/evaluation.md were measured on. Running it again only
# fetches what is missing. About 175 MB is downloaded once (opencv-doc is 96 MB of it) and
# deleted once the photos are copied: DIR keeps about 40 MB of photos (the benchmarks add
# about 700 MB of caches in DIR/cache).
set -euo pipefail

dir=${1:?usage: scripts/eval-photos.sh DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
photos="$dir/photos"
mkdir -p "$photos" "$dir/licences" "$dir/tmp"

# Debian 12 (bookworm) versions the set was built from.
declare -A VERSION=(
  [lomiri-wallpapers-16.04]=20.04.0-2
  [lomiri-wallpapers-20.04]=20.04.0-2
  [mate-backgrounds]=1.26.0-1
  [plasma-workspace-wallpapers]=4:5.27.5-2
  [opencv-doc]=4.6.0+dfsg-12
)
# Where each package keeps the photos (the catalogue's paths are relative to it).
declare -A ROOT=(
  [lomiri-wallpapers-16.04]=usr/share/backgrounds
  [lomiri-wallpapers-20.04]=usr/share/backgrounds
  [mate-backgrounds]=usr/share/backgrounds/mate/nature
  [plasma-workspace-wallpapers]=usr/share/wallpapers
  [opencv-doc]=usr/share/doc/opencv-doc/examples
)

# name, role, series, package, path, licence (as the package's copyright file states it for
# the file), author, sha256 (first 16 hex digits).
# Roles (bench/evalset.py): query = an original that queries are made from, indexed;
# distractor = indexed only; tiles = cut into non-overlapping tiles that are indexed (the photo
# itself is not); filler = cut into tiles that fill collages, never indexed.
# Series: photos of one scene (stereo pairs, consecutive frames, one calibration session):
# none of them is ever a query, and they make the "similar scene" pairs of bench/thresholds.py.
# Left out on purpose: illustrations and renders (umang, OpenCV's Blender_Suzanne and
# starry_night, ...), synthetic images, and OpenCV samples of unclear provenance (baboon,
# messi5, lena is not in Debian), ela_modified (an edited copy of ela_original).
CATALOGUE=$(cat <<'EOF'
lomiri-Picture_0B	query	lomiri-Picture_0B	lomiri-wallpapers-16.04	Picture_0B_by_freespace.jpg	CC-BY-4.0	Trevor "Freespace"	c8c0ab18e48d9e04
lomiri-Picture_1A	query	lomiri-Picture_1A	lomiri-wallpapers-16.04	Picture_1A_by_freespace.jpg	CC-BY-4.0	Trevor "Freespace"	89e86af38d04daae
lomiri-Wine	query	lomiri-Wine	lomiri-wallpapers-16.04	Wine_by_Jakkub_Mede.jpg	CC-BY-4.0	Jakub Mede	d2e96e6d4da40dd8
lomiri-aitzgorri	query	lomiri-aitzgorri	lomiri-wallpapers-16.04	aitzgorri_by_Aitzol_Berasategi.jpg	CC-BY-4.0	Aitzol Berasategi	66268e7b48f8854d
lomiri-free	query	lomiri-free	lomiri-wallpapers-16.04	free_by_Peter_Nerlich.jpg	CC-BY-SA-4.0	Peter Nerlich	85a5453c2fed514c
lomiri-friends	query	lomiri-friends	lomiri-wallpapers-16.04	friends_by_Aitzol_Berasategi.jpg	CC-BY-4.0	Aitzol Berasategi	cc40e313c74e421e
lomiri-greentock	query	lomiri-greentock	lomiri-wallpapers-16.04	greentock_by_Peter_Nerlich.jpg	CC-BY-SA-4.0	Peter Nerlich	e7b20e2db9dcd6e2
lomiri-life	query	lomiri-life	lomiri-wallpapers-16.04	life_by_Aitzol_Berasategi.jpg	CC-BY-4.0	Aitzol Berasategi	4c119350ead80201
lomiri-Dragonfly	tiles	lomiri-Dragonfly	lomiri-wallpapers-16.04	Dragonfly_by_Bolly.jpg	CC-BY-SA-4.0	"Bolly"	af5af17841009732
lomiri-seeding	tiles	lomiri-seeding	lomiri-wallpapers-16.04	seeding_by_Clements_Engelhardt.jpg	CC0-1.0	Clemens Engelhardt	a5634d1ab5e41a35
lomiri-sunset	tiles	lomiri-sunset	lomiri-wallpapers-16.04	sunset_by_Aitzol_Berasategi.jpg	CC-BY-4.0	Aitzol Berasategi	474dab6a4b9f94dc
lomiri-picosdeeuropa	tiles	lomiri-picosdeeuropa	lomiri-wallpapers-16.04	picosdeeuropa_by_Aitzol_Berasategi.jpg	CC-BY-4.0	Aitzol Berasategi	414d0072b2f6f2c5
lomiri-analogpattern	tiles	lomiri-analogpattern	lomiri-wallpapers-16.04	analogpattern_by_Peter_Nerlich.jpg	CC-BY-SA-4.0	Peter Nerlich	15372488a192b2be
lomiri-Bridge	filler	lomiri-Bridge	lomiri-wallpapers-16.04	Bridge_by_Sander_Klootwijk.jpg	CC-BY-SA-4.0	Sander Klootwijk	bd86b081f9975e2b
lomiri-Kleiber	tiles	lomiri-Kleiber	lomiri-wallpapers-20.04	Kleiber_by_Lukas_Baubkus.jpg	CC-BY-SA-3.0	Lukas Baubkus	6572410c09f4492c
mate-Aqua	query	mate-Aqua	mate-backgrounds	Aqua.jpg	GPL-2+	Charles Barbin	5c30118205982da4
mate-Blinds	query	mate-Blinds	mate-backgrounds	Blinds.jpg	GPL-2+	Lennart Poettering, Andrea Cimitan	f7aac0dcc2e06d04
mate-Dune	query	mate-Dune	mate-backgrounds	Dune.jpg	GPL-2+	Marco Cogoni, Hylke Bons	8a67c2cb0be8c46b
mate-FreshFlower	query	mate-FreshFlower	mate-backgrounds	FreshFlower.jpg	GPL-2+	Jens Ansorg	972b0a0c4e5e3fa9
mate-GreenMeadow	query	mate-GreenMeadow	mate-backgrounds	GreenMeadow.jpg	GPL-2+	Timothy Schellhase, Lapo Calamandrei	8fa0de0aa4089f73
mate-LadyBird	query	mate-LadyBird	mate-backgrounds	LadyBird.jpg	GPL-2+	Charles Barbin	e35a9a4126ef969c
mate-RainDrops	query	mate-RainDrops	mate-backgrounds	RainDrops.jpg	GPL-2+	"blackcombwhistler07"	3e4ea9671c28c90a
mate-YellowFlower	query	mate-YellowFlower	mate-backgrounds	YellowFlower.jpg	GPL-2+	Charles Barbin	254da96256acb7ad
mate-Garden	tiles	mate-Garden	mate-backgrounds	Garden.jpg	GPL-2+	Charles Barbin	d3095ee09d425ef2
mate-Wood	tiles	mate-Wood	mate-backgrounds	Wood.jpg	GPL-2+	Jean-François Fortin Tam	19c78500ac00a622
mate-Storm	tiles	mate-Storm	mate-backgrounds	Storm.jpg	GPL-2+	Sergey Nazarov	77ca53077831d323
mate-TwoWings	filler	mate-TwoWings	mate-backgrounds	TwoWings.jpg	GPL-2+	Charles Barbin, Hylke Bons	665e5abf8a539907
plasma-BytheWater	query	plasma-BytheWater	plasma-workspace-wallpapers	BytheWater/contents/images/2560x1600.jpg	GPL-2+	Maciej Wiklo	c272434ef39f2abf
plasma-ColdRipple	query	plasma-ColdRipple	plasma-workspace-wallpapers	ColdRipple/contents/images/2560x1600.jpg	GPL-2+	Risto Saukonpää	05bef6722fc0ed81
plasma-DarkestHour	query	plasma-DarkestHour	plasma-workspace-wallpapers	DarkestHour/contents/images/2560x1600.jpg	GPL-2+	Risto Saukonpää	8e3703fae3a3c217
plasma-Kite	query	plasma-Kite	plasma-workspace-wallpapers	Kite/contents/images/2560x1600.jpg	GPL-2+	Risto Saukonpää	bdca288ce296a981
plasma-summer_1am	query	plasma-summer_1am	plasma-workspace-wallpapers	summer_1am/contents/images/2560x1600.jpg	GPL-2+	Risto Saukonpää	c868b50789591dd4
plasma-EveningGlow	tiles	plasma-EveningGlow	plasma-workspace-wallpapers	EveningGlow/contents/images/2560x1600.jpg	GPL-2+	Ian Hex	586682dcb362b9f6
plasma-OneStandsOut	tiles	plasma-OneStandsOut	plasma-workspace-wallpapers	OneStandsOut/contents/images/2560x1600.jpg	GPL-2+	Risto Saukonpää	cb507baf1dafdcae
plasma-Path	tiles	plasma-Path	plasma-workspace-wallpapers	Path/contents/images/2560x1600.jpg	GPL-2+	Risto Saukonpää	7477457d7f17b736
plasma-ColorfulCups	tiles	plasma-ColorfulCups	plasma-workspace-wallpapers	ColorfulCups/contents/images/2560x1600.jpg	GPL-2+	Dmitri Popov	6e0f3a72feb5a4a9
plasma-Grey	tiles	plasma-Grey	plasma-workspace-wallpapers	Grey/contents/images/2560x1600.jpg	GPL-2+	Sigi Sagi	88c31d8944b7e693
plasma-FallenLeaf	filler	plasma-FallenLeaf	plasma-workspace-wallpapers	FallenLeaf/contents/images/2560x1600.jpg	GPL-2+	Martin Klapetek	95603a6560c7e8d5
opencv-apple	query	opencv-apple	opencv-doc	data/apple.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	e86879de3d9a807d
opencv-board	query	opencv-board	opencv-doc	data/board.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	4c9a24ba67138ad5
opencv-box_in_scene	query	opencv-box_in_scene	opencv-doc	data/box_in_scene.png	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	8b0225ff76244a42
opencv-building	query	opencv-building	opencv-doc	data/building.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	742a1baad62ac82e
opencv-butterfly	query	opencv-butterfly	opencv-doc	data/butterfly.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	34a99716b78ded10
opencv-ela_original	query	opencv-ela_original	opencv-doc	data/ela_original.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	b55798b35e2dcb24
opencv-fruits	query	opencv-fruits	opencv-doc	data/fruits.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	9c031d80a1c52da5
opencv-home	query	opencv-home	opencv-doc	data/home.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	23b8cf46a1965d0e
opencv-licenseplate_motion	query	opencv-licenseplate_motion	opencv-doc	data/licenseplate_motion.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	ea6fa9cea75df91b
opencv-orange	query	opencv-orange	opencv-doc	data/orange.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	152c20d2f380ac98
opencv-squirrel_cls	query	opencv-squirrel_cls	opencv-doc	data/squirrel_cls.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	20bb6e8ae96918a3
opencv-stuff	query	opencv-stuff	opencv-doc	data/stuff.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	21cd00afbdd0727f
opencv-sudoku	query	opencv-sudoku	opencv-doc	data/sudoku.png	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	000cf81b7ce79501
opencv-hfs-000	query	opencv-hfs-000	opencv-doc	hfs/data/000.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	e4fec7e2e67a8a42
opencv-hfs-001	query	opencv-hfs-001	opencv-doc	hfs/data/001.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	4bcbe0927a8b50f2
opencv-hfs-002	query	opencv-hfs-002	opencv-doc	hfs/data/002.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	21b07a5287dec030
opencv-scenetext01	query	opencv-scenetext01	opencv-doc	text/scenetext01.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	7f3041a7019ab4d3
opencv-scenetext02	query	opencv-scenetext02	opencv-doc	text/scenetext02.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	d4295bff9f348012
opencv-scenetext03	query	opencv-scenetext03	opencv-doc	text/scenetext03.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	cadf4a3d29a7ba6f
opencv-scenetext04	query	opencv-scenetext04	opencv-doc	text/scenetext04.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	28e08d142a04f92f
opencv-scenetext05	query	opencv-scenetext05	opencv-doc	text/scenetext05.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	63985ac1a9989a83
opencv-scenetext06	query	opencv-scenetext06	opencv-doc	text/scenetext06.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	e4d64f10bbfb27b2
opencv-word01	query	opencv-word01	opencv-doc	text/scenetext_segmented_word01.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	b1524d1ae02ba1ee
opencv-word02	query	opencv-word02	opencv-doc	text/scenetext_segmented_word02.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	1c648c38ebf82696
opencv-word03	query	opencv-word03	opencv-doc	text/scenetext_segmented_word03.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	6f60d1b006b81d95
opencv-word04	query	opencv-word04	opencv-doc	text/scenetext_segmented_word04.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	43524ab83453638e
opencv-word05	query	opencv-word05	opencv-doc	text/scenetext_segmented_word05.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	3c805afc79559644
opencv-aero1	distractor	aero	opencv-doc	data/aero1.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	d9a69191f6e3642e
opencv-aero3	distractor	aero	opencv-doc	data/aero3.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	1c407146f8762b3b
opencv-aloeL	distractor	aloe	opencv-doc	data/aloeL.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	cce5736808efe80d
opencv-aloeR	distractor	aloe	opencv-doc	data/aloeR.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	9b23100df31a846b
opencv-basketball1	distractor	basketball	opencv-doc	data/basketball1.png	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	ba06f6701f726099
opencv-basketball2	distractor	basketball	opencv-doc	data/basketball2.png	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	b3047772e0dc6c9d
opencv-graf1	distractor	graf	opencv-doc	data/graf1.png	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	1504b769303c7bde
opencv-graf3	distractor	graf	opencv-doc	data/graf3.png	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	492e0e96f21748d0
opencv-leuvenA	distractor	leuven	opencv-doc	data/leuvenA.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	b2977cdbd9fb3f94
opencv-leuvenB	distractor	leuven	opencv-doc	data/leuvenB.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	5bb41a60038a2baa
opencv-books-left	distractor	books	opencv-doc	data/left.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	fb314330c3eb0a81
opencv-books-right	distractor	books	opencv-doc	data/right.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	20972954be263a99
opencv-rubberwhale1	distractor	rubberwhale	opencv-doc	data/rubberwhale1.png	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	eb312435369dac9e
opencv-rubberwhale2	distractor	rubberwhale	opencv-doc	data/rubberwhale2.png	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	ee309a00d47b837b
opencv-text_defocus	distractor	blurred-text	opencv-doc	data/text_defocus.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	ffea13e23e2bdce6
opencv-text_motion	distractor	blurred-text	opencv-doc	data/text_motion.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	85b43c44379fc490
opencv-pca_test1	distractor	opencv-pca_test1	opencv-doc	data/pca_test1.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	9aae52b2bf730216
opencv-HappyFish	distractor	opencv-HappyFish	opencv-doc	data/HappyFish.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	ade5b67347d7f89b
opencv-left01	distractor	chessboard	opencv-doc	data/left01.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	9621899098adffa1
opencv-left02	distractor	chessboard	opencv-doc	data/left02.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	052e700bbcc865c1
opencv-left03	distractor	chessboard	opencv-doc	data/left03.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	c85b9426c3d8fcf1
opencv-left04	distractor	chessboard	opencv-doc	data/left04.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	b490599dccfbfe5e
opencv-left05	distractor	chessboard	opencv-doc	data/left05.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	40bab8934fa76f82
opencv-left06	distractor	chessboard	opencv-doc	data/left06.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	1cb164db61b3bd52
opencv-left07	distractor	chessboard	opencv-doc	data/left07.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	d2211fe9f971646b
opencv-left08	distractor	chessboard	opencv-doc	data/left08.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	f7a0737894812a28
opencv-left09	distractor	chessboard	opencv-doc	data/left09.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	753939bc62d093c0
opencv-left11	distractor	chessboard	opencv-doc	data/left11.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	e736ace3d515c94c
opencv-left12	distractor	chessboard	opencv-doc	data/left12.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	04bdd78b3b507fe0
opencv-left13	distractor	chessboard	opencv-doc	data/left13.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	2637fb6dd5e557f4
opencv-left14	distractor	chessboard	opencv-doc	data/left14.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	d4c032971dd7b859
opencv-right01	distractor	chessboard	opencv-doc	data/right01.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	94a160342fade4d0
opencv-right02	distractor	chessboard	opencv-doc	data/right02.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	f7819b2fcc45fdef
opencv-right03	distractor	chessboard	opencv-doc	data/right03.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	43a3cea1907be641
opencv-right04	distractor	chessboard	opencv-doc	data/right04.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	d5874ff3d948dbb6
opencv-right05	distractor	chessboard	opencv-doc	data/right05.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	9382a24af5a21a9e
opencv-right06	distractor	chessboard	opencv-doc	data/right06.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	874b60edc8a53da4
opencv-right07	distractor	chessboard	opencv-doc	data/right07.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	446093eead30c8cb
opencv-right08	distractor	chessboard	opencv-doc	data/right08.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	5f1be870c8709fd5
opencv-right09	distractor	chessboard	opencv-doc	data/right09.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	de28e9f146f4b7de
opencv-right11	distractor	chessboard	opencv-doc	data/right11.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	2695e8f8e94eaef0
opencv-right12	distractor	chessboard	opencv-doc	data/right12.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	07489b6a334fae39
opencv-right13	distractor	chessboard	opencv-doc	data/right13.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	a576cc5e69668d65
opencv-right14	distractor	chessboard	opencv-doc	data/right14.jpg	Apache-2.0 AND BSD-3-Clause	OpenCV contributors	e98bbe907610e949
EOF
)

log() { printf '%s\n' "eval-photos: $*" >&2; }

# apt options that point at private package lists, set once they are needed.
apt_opts=()
private_lists() {
  [ ${#apt_opts[@]} -gt 0 ] && return
  log "the system's package lists lack a pinned version: private lists in $dir/apt"
  mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache/archives/partial"
  apt_opts=(-o "Dir::State::Lists=$dir/apt/lists" -o "Dir::Cache=$dir/apt/cache"
            -o Debug::NoLocking=true)
  apt-get "${apt_opts[@]}" update -qq
}

sha16() { sha256sum "$1" | cut -c1-16; }

# Whether every photo of a package is already in DIR/photos with its sha256.
have_all() {
  local pkg=$1 name role series p path licence author sha ext
  while IFS=$'\t' read -r name role series p path licence author sha; do
    [ "$p" = "$pkg" ] || continue
    ext=${path##*.}
    [ -f "$photos/$name.$ext" ] && [ "$(sha16 "$photos/$name.$ext")" = "$sha" ] || return 1
  done <<<"$CATALOGUE"
  [ -f "$dir/licences/$pkg.copyright" ]
}

fetch() {
  local pkg=$1 version=${VERSION[$1]} work="$dir/tmp/$1"
  rm -rf "$work" && mkdir -p "$work/root"
  # apt-get download writes into the current directory and needs no root.
  if ! apt-cache "${apt_opts[@]}" show "$pkg=$version" >/dev/null 2>&1; then
    private_lists
  fi
  (cd "$work" && apt-get "${apt_opts[@]}" download -qq "$pkg=$version") || {
    log "$pkg $version is not in the archive any more; the set cannot be rebuilt as measured"
    return 1
  }
  dpkg-deb -x "$work"/*.deb "$work/root"
  cp "$work/root/usr/share/doc/$pkg/copyright" "$dir/licences/$pkg.copyright"
  local name role series p path licence author sha ext src
  while IFS=$'\t' read -r name role series p path licence author sha; do
    [ "$p" = "$pkg" ] || continue
    src="$work/root/${ROOT[$pkg]}/$path"
    ext=${path##*.}
    [ "$(sha16 "$src")" = "$sha" ] || { log "$pkg: $path is not the file measured"; return 1; }
    cp "$src" "$photos/$name.$ext"
  done <<<"$CATALOGUE"
  rm -rf "$work"
}

for pkg in "${!VERSION[@]}"; do
  if have_all "$pkg"; then
    log "$pkg: photos present"
  else
    log "$pkg ${VERSION[$pkg]}: fetching"
    fetch "$pkg"
  fi
done

# Each stated licence must appear in the package's copyright file (the check behind the
# manifest's licence column; docs/evaluation.md quotes the files' terms).
manifest="$dir/manifest.tsv"
{
  printf 'name\tfile\trole\tseries\tpackage\tversion\tlicence\tauthor\tsha256_16\n'
  while IFS=$'\t' read -r name role series pkg path licence author sha; do
    grep -qF "License: $licence" "$dir/licences/$pkg.copyright" || {
      log "$pkg: its copyright file does not state $licence (for $name)"
      exit 1
    }
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "photos/$name.${path##*.}" "$role" \
      "$series" "$pkg" "${VERSION[$pkg]}" "$licence" "$author" "$sha"
  done <<<"$CATALOGUE"
} >"$manifest.tmp"
mv "$manifest.tmp" "$manifest"
rm -rf "$dir/tmp"
log "$(($(wc -l <"$manifest") - 1)) photos in $photos; manifest $manifest"

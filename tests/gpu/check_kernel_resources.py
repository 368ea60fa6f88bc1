#!/usr/bin/env python3
"""Build-time check of every CUDA kernel's resources against its launch.

Reads the sm_90 cubins inside the objects nvcc built (the .nv_fatbin section of
each object: no cuobjdump needed) and, per kernel, its register count, its
__launch_bounds__ (the cubin's max-threads attribute) and its static shared
memory; then reads the kernel launches (`kernel<...><<<grid, block, ...>>>`) in
the CUDA sources. It fails when

  * a kernel has no __launch_bounds__ (the compiler may then use more registers
    than a large block can have: the launch fails with "too many resources
    requested" only on a GPU, and only for the shapes that pick a large block);
  * a kernel uses more than 255 registers per thread, or its bound times its
    registers (allocated per warp in units of 256) exceeds the 65536 registers
    of a block, or its static shared memory exceeds 48 KiB;
  * a launch's block size (at most) exceeds the kernel's bound, or cannot be
    read from the source: the block must be a named constexpr (kBlock, ...), a
    row_block_size(n[, cap]) or a dim3 of named constants.

The bound in the binary is the one source of truth of a kernel's largest block;
the launch sites are checked against it.

Usage: check_kernel_resources.py --sources DIR [--sources DIR...] OBJECT...
       check_kernel_resources.py --expect-errors TEXT[,TEXT...] --sources DIR OBJECT...
(the second form passes only when the check fails with each TEXT among its
errors: the suite's proof that the check can fail).
"""
import argparse
import os
import re
import shutil
import struct
import subprocess
import sys

REGS_PER_BLOCK = 65536
MAX_REGS_PER_THREAD = 255
REG_ALLOC_UNIT = 256  # registers are allocated per warp in units of 256
STATIC_SMEM_LIMIT = 48 * 1024
RESERVED_SMEM = 1024  # sm_90 reserves 1 KiB of shared memory per block; the cubin counts it
ARCH = 90  # --arch: the SM whose cubins are read (the first of CMAKE_CUDA_ARCHITECTURES)

EIATTR_MAX_THREADS = 0x05
EIATTR_FRAME_SIZE = 0x11
EIATTR_REGCOUNT = 0x2F
FATBIN_MAGIC = 0xBA55ED50
FATBIN_KIND_ELF = 2
FATBIN_FLAG_COMPRESS = 0x2000  # LZ4 (nvcc's -Xfatbin -compress-all before CUDA 13)
FATBIN_FLAG_COMPRESS_ZSTD = 0x8000  # zstd (CUDA 13's -Xfatbin -compress-all); needs the zstd program


class CheckError(Exception):
    pass


# ---------------------------------------------------------------- ELF and fatbin


def elf_sections(data, what):
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise CheckError(f"{what}: not a 64-bit ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    secs = []
    for i in range(shnum):
        name, typ, _flags, _addr, off, size, link, info, _align, entsize = struct.unpack_from(
            "<IIQQQQIIQQ", data, shoff + i * shentsize)
        secs.append({"name": name, "type": typ, "off": off, "size": size, "link": link, "info": info,
                     "entsize": entsize})
    strtab = secs[shstrndx]["off"]
    for s in secs:
        start = strtab + s["name"]
        s["name"] = data[start:data.index(b"\0", start)].decode()
        s["data"] = data[s["off"]:s["off"] + s["size"]] if s["type"] != 8 else b""  # 8: NOBITS
    return secs


def lz4_block_decompress(src, size):
    out = bytearray()
    i = 0
    while i < len(src):
        token = src[i]
        i += 1
        lit = token >> 4
        if lit == 15:
            while True:
                b = src[i]
                i += 1
                lit += b
                if b != 255:
                    break
        out += src[i:i + lit]
        i += lit
        if i >= len(src) or len(out) >= size:
            break
        (offset,) = struct.unpack_from("<H", src, i)
        i += 2
        match = (token & 15) + 4
        if (token & 15) == 15:
            while True:
                b = src[i]
                i += 1
                match += b
                if b != 255:
                    break
        start = len(out) - offset
        for k in range(match):
            out.append(out[start + k])
    return bytes(out[:size])


def archive_members(data):
    """The members of a static library (ar archive)."""
    pos = 8
    while pos + 60 <= len(data):
        size = int(data[pos + 48:pos + 58].decode().strip())
        name = data[pos:pos + 16].decode(errors="replace").strip()
        body = data[pos + 60:pos + 60 + size]
        if name not in ("/", "//", "/SYM64/") and body[:4] == b"\x7fELF":
            yield body
        pos += 60 + size + (size & 1)


def zstd_decompress(src, what):
    tool = shutil.which("zstd")
    if tool is None:
        raise CheckError(f"{what}: the cubins are zstd-compressed (-Xfatbin -compress-all) and the zstd program is "
                         "not installed; install zstd or build without fatbin compression")
    try:
        return subprocess.run([tool, "-d", "-c", "-q"], input=src, capture_output=True, check=True,
                              timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise CheckError(f"{what}: zstd could not decompress a cubin: {e}") from e


def cubins(path, arch):
    """The sm_90 ELF images in the .nv_fatbin sections of an object, a static or a shared library."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] == b"!<arch>\n":
        return [image for member in archive_members(data) for image in cubins_of(member, path, arch)]
    return cubins_of(data, path, arch)


def cubins_of(data, path, want_arch):
    fat = [s for s in elf_sections(data, path) if s["name"] == ".nv_fatbin"]
    if not fat:
        return []
    fb = fat[0]["data"]
    images = []
    pos = 0
    while pos + 16 <= len(fb):
        magic, _ver, hsize, fsize = struct.unpack_from("<IHHQ", fb, pos)
        if magic != FATBIN_MAGIC:
            break
        p = pos + hsize
        end = p + fsize
        while p < end:
            kind, _v, ehs, size = struct.unpack_from("<HHIQ", fb, p)
            (csize,) = struct.unpack_from("<I", fb, p + 16)
            (arch,) = struct.unpack_from("<I", fb, p + 28)
            (flags,) = struct.unpack_from("<Q", fb, p + 40)
            (usize,) = struct.unpack_from("<Q", fb, p + 56) if ehs >= 64 else (0,)
            payload = fb[p + ehs:p + ehs + size]
            if kind == FATBIN_KIND_ELF and arch == want_arch:
                if flags & FATBIN_FLAG_COMPRESS_ZSTD:
                    payload = zstd_decompress(payload[:csize], path)
                elif flags & FATBIN_FLAG_COMPRESS:
                    payload = lz4_block_decompress(payload[:csize], usize)
                if payload[:4] != b"\x7fELF":
                    raise CheckError(f"{path}: an sm_{arch} image in an unknown encoding (fatbin flags {flags:#x}); "
                                     "build with -Xfatbin=-compress-all=false or teach this script the format")
                images.append(payload)
            p += ehs + size
        pos = end
    return images


def kernels_of(image, what):
    """{mangled name: {regs, bound, smem, frame}} for the kernels (entries) of one cubin."""
    secs = elf_sections(image, what)
    symtab = next((s for s in secs if s["type"] == 2), None)  # SHT_SYMTAB
    names = []
    if symtab is not None:
        strtab = secs[symtab["link"]]["data"]
        for k in range(symtab["size"] // 24):
            (st_name,) = struct.unpack_from("<I", symtab["data"], k * 24)
            names.append(strtab[st_name:strtab.index(b"\0", st_name)].decode())

    def records(blob):
        q = 0
        while q + 2 <= len(blob):
            fmt, attr = blob[q], blob[q + 1]
            if fmt == 4:  # EIFMT_SVAL: u16 size, then the value
                (n,) = struct.unpack_from("<H", blob, q + 2)
                yield attr, blob[q + 4:q + 4 + n]
                q += 4 + n
            else:
                yield attr, blob[q + 2:q + 4]
                q += 4

    regs, frame = {}, {}
    for s in secs:
        if s["name"] == ".nv.info":
            for attr, val in records(s["data"]):
                if attr == EIATTR_REGCOUNT and len(val) >= 8:
                    sym, n = struct.unpack_from("<II", val)
                    regs[names[sym]] = n
                elif attr == EIATTR_FRAME_SIZE and len(val) >= 8:
                    sym, n = struct.unpack_from("<II", val)
                    frame[names[sym]] = n
    smem = {s["name"][len(".nv.shared."):]: s["size"] for s in secs if s["name"].startswith(".nv.shared.")}
    out = {}
    for s in secs:
        if not s["name"].startswith(".nv.info."):
            continue
        name = s["name"][len(".nv.info."):]
        bound = None
        for attr, val in records(s["data"]):
            if attr == EIATTR_MAX_THREADS and len(val) >= 12:
                x, y, z = struct.unpack_from("<III", val)
                bound = x * y * z
        out[name] = {"regs": regs.get(name, 0), "bound": bound, "smem": smem.get(name, 0),
                     "frame": frame.get(name, 0)}
    return out


# ---------------------------------------------------------------- sources


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def source_files(dirs):
    for d in dirs:
        for name in sorted(os.listdir(d)):
            if name.endswith((".cu", ".cuh", ".h")):
                yield os.path.join(d, name)


def constants(files):
    """Every `constexpr int kName = expr;` of the sources, evaluated (expr of numbers and earlier constants)."""
    raw, clash = {}, set()
    for path, text in files.items():
        for m in re.finditer(r"constexpr\s+(?:int|int64_t|unsigned)\s+(k\w+)\s*=\s*([^;]+);", text):
            if raw.setdefault(m.group(1), m.group(2).strip()) != m.group(2).strip():
                clash.add(m.group(1))  # two definitions: a launch using it cannot be read
    for name in clash:
        del raw[name]
    values = {}
    for _ in range(len(raw) + 1):
        for name, expr in raw.items():
            if name in values:
                continue
            v = evaluate(expr, values)
            if v is not None:
                values[name] = v
    return values


def evaluate(expr, values):
    expr = expr.strip()
    if not re.fullmatch(r"[\w\s*+\-/()]+", expr):
        return None
    for ident in re.findall(r"[A-Za-z_]\w*", expr):
        if ident not in values:
            return None
    try:
        return int(eval(expr, {"__builtins__": {}}, dict(values)))  # only numbers, constants and + - * / ( )
    except Exception:  # noqa: BLE001 - anything unevaluable is "unknown"
        return None


def split_top(args):
    parts, depth, cur = [], 0, ""
    for ch in args:
        if ch in "(<[{":
            depth += 1
        elif ch in ")>]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return parts


def block_max(expr, text, pos, consts):
    """The largest block a launch's block expression gives, or None when it cannot be read."""
    v = evaluate(expr, consts)
    if v is not None:
        return v
    m = re.fullmatch(r"row_block_size\((.*)\)", expr, re.S)
    if m:
        args = split_top(m.group(1))
        return evaluate(args[1], consts) if len(args) == 2 else consts.get("kRowThreads")
    m = re.fullmatch(r"[A-Za-z_]\w*", expr)
    if m:  # a dim3 or int variable defined earlier in the file from constants
        defs = list(re.finditer(r"(?:dim3|int)\s+" + expr + r"\s*[({=]\s*([^;]*?)[)}]?\s*;", text[:pos]))
        if defs:
            dims = [evaluate(a, consts) for a in split_top(defs[-1].group(1))]
            if dims and all(d is not None for d in dims):
                total = 1
                for d in dims:
                    total *= d
                return total
    return None


def launches(files, consts):
    """[(file, line, kernel base name, max block or None, block expr)] for every <<<...>>> launch."""
    out = []
    for path, text in files.items():
        for m in re.finditer(r"([A-Za-z_]\w*)\s*(<(?:[^<>]|<[^<>]*>)*>)?\s*<<<(.*?)>>>", text, re.S):
            name = m.group(1)
            aliases = list(re.finditer(r"auto\s+" + name + r"\s*=\s*([A-Za-z_]\w*)\s*<", text[:m.start()]))
            alias = aliases[-1] if aliases else None  # the nearest definition before the launch
            if alias and not re.search(r"__global__[^;{]*\b" + name + r"\s*\(", text):
                name = alias.group(1)
            args = split_top(m.group(3))
            expr = args[1] if len(args) > 1 else ""
            line = text.count("\n", 0, m.start()) + 1
            out.append((path, line, name, block_max(expr, text, m.start(), consts), expr))
    return out


# ---------------------------------------------------------------- the check


def regs_per_block(regs, threads):
    warps = (threads + 31) // 32
    per_warp = (regs * 32 + REG_ALLOC_UNIT - 1) // REG_ALLOC_UNIT * REG_ALLOC_UNIT
    return warps * per_warp


def demangled(names):
    """{mangled: readable} through c++filt when it is installed (else the mangled names)."""
    names = sorted(set(names))
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    try:
        out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True,
                             timeout=60).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return {n: n for n in names}
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def demangle_base(mangled, bases):
    for b in bases:
        if "%d%s" % (len(b), b) in mangled:  # Itanium mangling: <length><identifier>
            return b
    return None


def check(objects, source_dirs, arch=ARCH):
    errors, kernels = [], {}
    for obj in objects:
        for image in cubins(obj, arch):
            for name, k in kernels_of(image, obj).items():
                kernels[name] = dict(k, obj=obj)
    if not kernels:
        raise CheckError(f"no sm_{arch} kernels found in " + " ".join(objects) + f"; were they built for sm_{arch}?")
    files = {}
    for path in source_files(source_dirs):
        with open(path, encoding="utf-8") as f:
            files[path] = strip_comments(f.read())
    ours = set()
    for text in files.values():
        ours.update(re.findall(r"__global__\s+void\s+(?:__launch_bounds__\((?:[^()]|\([^()]*\))*\)\s+)?(\w+)\s*\(",
                               text))
    ours = sorted(ours, key=len, reverse=True)
    readable = demangled([n for n, k in kernels.items() if k["bound"] is None or k["regs"] > 64])
    for name, k in sorted(kernels.items()):
        where = f"{readable.get(name, name)} ({os.path.basename(k['obj'])})"
        if k["bound"] is None and demangle_base(name, ours) is None:
            # A library's kernel (CUB's): launched by code we do not read; it must fit any block.
            if regs_per_block(k["regs"], 1024) > REGS_PER_BLOCK:
                errors.append(f"{where}: a library kernel without __launch_bounds__ using {k['regs']} registers "
                              "would not fit a block of 1024 threads")
            continue
        if k["bound"] is None:
            errors.append(f"{where}: no __launch_bounds__; give the kernel __launch_bounds__(N) with N its largest "
                          "launch block (a named constant the launch uses too)")
            continue
        if k["regs"] > MAX_REGS_PER_THREAD:
            errors.append(f"{where}: {k['regs']} registers per thread > {MAX_REGS_PER_THREAD}")
        need = regs_per_block(k["regs"], k["bound"])
        if need > REGS_PER_BLOCK:
            errors.append(f"{where}: {k['regs']} registers x {k['bound']} threads (__launch_bounds__) needs {need} "
                          f"registers > {REGS_PER_BLOCK} per block")
        if k["smem"] > STATIC_SMEM_LIMIT + RESERVED_SMEM:
            errors.append(f"{where}: {k['smem']} bytes of static shared memory > {STATIC_SMEM_LIMIT}")
    consts = constants(files)
    sites = launches(files, consts)
    bases = sorted({s[2] for s in sites}, key=len, reverse=True)
    bound_of = {}
    for name, k in kernels.items():
        b = demangle_base(name, bases)
        if b is not None and k["bound"] is not None:
            bound_of[b] = min(bound_of.get(b, k["bound"]), k["bound"])
    for path, line, base, block, expr in sites:
        where = f"{path}:{line}: launch of {base}"
        if block is None:
            errors.append(f"{where}: cannot read the block size '{expr}'; use a named constexpr (the kernel's "
                          "__launch_bounds__), row_block_size(n, kCap) or a dim3 of named constants")
            continue
        if base not in bound_of:
            if not any(demangle_base(n, [base]) for n in kernels):
                errors.append(f"{where}: no kernel of that name in the objects")
            continue
        if block > bound_of[base]:
            errors.append(f"{where}: block of up to {block} threads ('{expr}') > the kernel's __launch_bounds__ "
                          f"{bound_of[base]}: the launch fails on a GPU")
    return kernels, sites, errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", action="append", default=[], help="directory of CUDA sources (.cu, .cuh, .h)")
    ap.add_argument("--expect-errors", default=None, help="comma-separated texts the check must report")
    ap.add_argument("--arch", type=int, default=ARCH, help="SM version of the cubins to read (default 90)")
    ap.add_argument("objects", nargs="+")
    a = ap.parse_args()
    try:
        kernels, sites, errors = check(a.objects, a.sources, a.arch)
    except CheckError as e:
        print("check_kernel_resources: " + str(e), file=sys.stderr)
        return 2
    if a.expect_errors is not None:
        missing = [t for t in a.expect_errors.split(",") if not any(t in e for e in errors)]
        for e in errors:
            print("reported (expected to fail): " + e)
        if missing:
            print("check_kernel_resources: the check did not report: " + "; ".join(missing), file=sys.stderr)
            return 1
        print(f"ok: the check failed as expected ({len(errors)} errors)")
        return 0
    for e in errors:
        print("error: " + e, file=sys.stderr)
    worst = max(kernels.values(), key=lambda k: regs_per_block(k["regs"], k["bound"] or 1024))
    framed = sum(1 for k in kernels.values() if k["frame"] > 0)
    print(f"{len(kernels)} kernels, {len(sites)} launch sites checked; most registers per block: "
          f"{regs_per_block(worst['regs'], worst['bound'] or 1024)} of {REGS_PER_BLOCK}; "
          f"{framed} kernels use a stack frame (local memory: arrays or spills)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Writes src/api/protobuf/generated.rs: the protobuf message table kedge decodes with.

For every message of the API packages below it records, per field, the protobuf tag and
wire type (from the package's generated.proto) and what the Go JSON encoding does with it
(from the Go struct tags in the same package: JSON name, omitempty, inline, pointer).
Both files come from bare git mirrors of the upstream repositories at one release tag, so
the output depends on nothing but those mirrors.

Re-run (from the repository root, after `fetch`ing the three repositories):

    python3 tools/protobuf/generate.py /work/.mirror v0.33.9 > src/api/protobuf/generated.rs
    cargo fmt
"""

import re
import subprocess
import sys

# (mirror directory, package directory): the versions kedge serves (see
# src/api/registry/builtin.rs) and the apimachinery packages they reference.
PACKAGES = [
    ("kubernetes+apimachinery", "pkg/apis/meta/v1"),
    ("kubernetes+apimachinery", "pkg/runtime"),
    ("kubernetes+apimachinery", "pkg/util/intstr"),
    ("kubernetes+apimachinery", "pkg/api/resource"),
    ("kubernetes+apiextensions-apiserver", "pkg/apis/apiextensions/v1"),
] + [
    ("kubernetes+api", p)
    for p in [
        "apps/v1", "authentication/v1", "authorization/v1", "autoscaling/v1",
        "autoscaling/v2", "batch/v1", "certificates/v1", "coordination/v1", "core/v1",
        "discovery/v1", "events/v1", "networking/v1", "policy/v1", "rbac/v1",
        "scheduling/v1", "storage/v1",
    ]
]

SCALARS = {
    "string": "Str", "bytes": "Bytes", "bool": "Bool", "int32": "I32", "int64": "I64",
    "double": "F64",
}

# Field flags, mirrored in src/api/protobuf/schema.rs.
REPEATED, OMITEMPTY, NILABLE, INLINE = 1, 2, 4, 8


def git(mirror, *args):
    return subprocess.run(
        ["git", "--git-dir", f"{mirror}/repo", *args],
        check=True, capture_output=True, text=True,
    ).stdout


def strip_comments(text):
    # Line comments first: doc comments may hold "/*" (as in "foo/*").
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


FIELD = re.compile(
    r"^(?:(optional|repeated|required)\s+)?(map\s*<\s*([\w.]+)\s*,\s*([\w.]+)\s*>|[\w.]+)"
    r"\s+(\w+)\s*=\s*(\d+)\s*;$"
)


def nullable_messages(text):
    """Messages whose Go type is a named slice (`+protobuf.nullable=true`), nil when absent."""
    return re.findall(r"\+protobuf\.nullable=true\n(?://[^\n]*\n)*message\s+(\w+)", text)


def parse_proto(text):
    """Returns (package, {message: [(label, type, key, value, name, tag)]})."""
    text = strip_comments(text)
    package = re.search(r"^package\s+([\w.]+);", text, re.M).group(1)
    messages, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or re.match(r"^(syntax|package|import|option)\b", line):
            continue
        m = re.match(r"^message\s+(\w+)\s*\{$", line)
        if m:
            assert current is None, f"nested message {m.group(1)} in {package}"
            current = messages.setdefault(m.group(1), [])
            continue
        if line == "}":
            current = None
            continue
        m = FIELD.match(line)
        assert m and current is not None, f"cannot parse {line!r} in {package}"
        label, typ, key, value, name, tag = m.groups()
        current.append((label or "optional", typ, key, value, name, int(tag)))
    return package, messages


GO_FIELD = re.compile(r"^\s*(?:(\w+)\s+)?(\S+)\s+`([^`]*)`")


def parse_go(files):
    """Returns {struct: {tag: (json name, omitempty, inline, pointer)}} from Go struct tags."""
    structs = {}
    for text in files:
        current, depth = None, 0
        for line in text.splitlines():
            m = re.match(r"^type\s+(\w+)\s+struct\s*\{", line)
            if m:
                current, depth = structs.setdefault(m.group(1), {}), 1
                continue
            if current is None:
                continue
            depth += line.count("{") - line.count("}")
            if depth <= 0:
                current = None
                continue
            m = GO_FIELD.match(line)
            if not m:
                continue
            gotype, tags = m.group(2), m.group(3)
            proto = re.search(r'protobuf:"\w+,(\d+),', tags)
            js = re.search(r'json:"([^"]*)"', tags)
            if not proto or not js:
                continue
            parts = js.group(1).split(",")
            current[int(proto.group(1))] = (
                parts[0], "omitempty" in parts[1:], "inline" in parts[1:],
                gotype.startswith("*"),
            )
    return structs


def resolve(package, typ, known):
    if typ in SCALARS:
        return None
    full = typ[1:] if typ.startswith(".") else (typ if "." in typ else f"{package}.{typ}")
    assert full in known, f"unknown message type {typ} in {package}"
    return full


def rust_type(package, typ, known):
    if typ in SCALARS:
        return f"Ty::{SCALARS[typ]}"
    return f'Ty::Msg("{resolve(package, typ, known)}")'


def main():
    root, tag = sys.argv[1], sys.argv[2]
    parsed, groups, nullable = [], [], set()
    for repo, path in PACKAGES:
        mirror = f"{root}/{repo}"
        proto = git(mirror, "show", f"{tag}:{path}/generated.proto")
        package, messages = parse_proto(proto)
        nullable.update(f"{package}.{m}" for m in nullable_messages(proto))
        names = git(mirror, "ls-tree", "--name-only", tag, f"{path}/").split()
        go_files = [
            git(mirror, "show", f"{tag}:{n}") for n in names
            if n.endswith(".go") and not n.endswith("_test.go")
            and not n.split("/")[-1].startswith(("zz_generated", "generated."))
        ]
        if f"{path}/register.go" in names:
            register = git(mirror, "show", f"{tag}:{path}/register.go")
            group = re.search(r'GroupName\s*=\s*"([^"]*)"', register)
            if group:
                groups.append((group.group(1), path.split("/")[-1], package))
        parsed.append((package, messages, parse_go(go_files)))

    known = {f"{p}.{m}" for p, ms, _ in parsed for m in ms}
    out = []
    unmatched = []
    for package, messages, structs in parsed:
        for name, fields in messages.items():
            go = structs.get(name, {})
            rows = []
            for label, typ, key, value, field, number in sorted(fields, key=lambda f: f[5]):
                json_name, omitempty, inline, pointer = go.get(number, (field, True, False, False))
                if number not in go:
                    unmatched.append(f"{package}.{name}.{field}")
                flags = OMITEMPTY if omitempty else 0
                if inline:
                    flags |= INLINE
                if typ.startswith("map"):
                    ty = f"Ty::Map(&{rust_type(package, key, known)}, &{rust_type(package, value, known)})"
                    flags |= NILABLE
                else:
                    ty = rust_type(package, typ, known)
                    if label == "repeated":
                        flags |= REPEATED | NILABLE
                    elif pointer or typ == "bytes" or resolve(package, typ, known) in nullable:
                        flags |= NILABLE
                rows.append(f'    Field::new({number}, "{json_name}", {ty}, {flags}),')
            out.append((f"{package}.{name}", rows))
    out.sort()
    print(f"""//! The protobuf messages of the built-in API groups, generated by
//! `tools/protobuf/generate.py` from the upstream `generated.proto` files and Go struct tags
//! at {tag}. Do not edit; re-run the generator.

use super::schema::{{Field, Message, Ty}};

/// (API group, version, protobuf package) of every group version in [`MESSAGES`].
pub static GROUPS: &[(&str, &str, &str)] = &[""")
    for g in sorted(groups):
        print(f'    ("{g[0]}", "{g[1]}", "{g[2]}"),')
    print("];\n\n/// Every message, sorted by full name.\npub static MESSAGES: &[Message] = &[")
    for name, rows in out:
        print(f'    Message {{\n        name: "{name}",\n        fields: &[')
        for r in rows:
            print("        " + r)
        print("        ],\n    },")
    print("];")
    print(f"fields without a Go struct tag (proto name used): {unmatched}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Wrap code lines over 120 characters in notebooks (and .py files) without changing what the code does.

    python tools/nb_wrap.py nbs/08_data.shards.ipynb [--dry-run]

Puts the body of a one-line `if x: y` on its own line, splits `a; b` statements, breaks after a comma or before
`if`/`else`/`and`/`or`/`for`/`+` inside brackets, splits a long string literal inside brackets into adjacent literals,
moves a trailing comment of a plain statement onto its own line above, re-flows a long comment line, and wraps the
value of a long `return x`, `name = x` or one-line docstring in parentheses (a long docstring becomes two adjacent
literals: the text is unchanged, but shortening it is better).
Every changed cell must parse to the same AST as before (so behaviour cannot change), else it is left as it was;
cells with IPython magics are skipped. What it cannot break (e.g. one long expression outside brackets) is listed.
A notebook is read, changed and written in one step.
"""
import argparse
import ast
import io
import json
import re
import sys
import textwrap
import tokenize
from pathlib import Path

MAX = 120
OPEN, CLOSE = "([{", ")]}"


def same_ast(a, b):
    try: return ast.dump(ast.parse(a)) == ast.dump(ast.parse(b))
    except SyntaxError: return False


def tokens(src):
    return list(tokenize.generate_tokens(io.StringIO(src).readline))


def string_split(tok_str, room):
    "Split one single-line string literal so its first part is at most `room` characters: (a, b) or None."
    m = re.match(r"([rRbBuUfF]*)('|\")", tok_str)
    if not m or tok_str[len(m.group(1)):].startswith(m.group(2) * 3): return None
    pre, q = m.group(1), m.group(2)
    body = tok_str[len(pre) + 1:-1]
    is_f = "f" in pre.lower()
    depth, best = 0, None
    for k, ch in enumerate(body):
        if is_f:
            if ch == "{": depth += 1
            elif ch == "}": depth -= 1
        fits = len(pre) + 2 + k + 1 <= room
        if ch == " " and depth == 0 and k > 0 and fits and body[k - 1] != "\\" and k + 1 < len(body):
            best = k + 1  # break after the space
    if best is None: return None
    a, b = body[:best], body[best:]
    def lit(t):
        p = pre if ("{" in t or not is_f) else pre.replace("f", "").replace("F", "")
        return f"{p}{q}{t}{q}"
    if is_f and (a.count("{") != a.count("}")): return None
    return lit(a), lit(b)


SKIP = (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
COMPOUND = {"if", "elif", "else", "for", "while", "with", "try", "except", "finally", "def", "class"}


def in_for_target(toks, depth_at, comma):
    "Whether `comma` sits in a comprehension's `for a, b in` target (no break there)."
    opener = depth_at[comma.start][-1]
    level, state = len(depth_at[comma.start]), None
    for t in toks:
        if t.start <= opener or len(depth_at.get(t.start, ())) != level: continue
        if t.start >= comma.start: break
        if t.type == tokenize.NAME and t.string == "for": state = "for"
        elif t.type == tokenize.NAME and t.string == "in": state = "in"
    return state == "for"


def wrap_once(src):
    "One edit that shortens the first long line it can; None when no line can be changed."
    lines = src.splitlines(keepends=True)
    try: toks = tokens(src)
    except (tokenize.TokenError, IndentationError, SyntaxError): return None
    depth_at, stack = {}, []  # (row, col) -> open bracket stack before the token
    for t in toks:
        depth_at[t.start] = list(stack)
        if t.type == tokenize.OP and t.string in OPEN: stack.append(t.start)
        elif t.type == tokenize.OP and t.string in CLOSE and stack: stack.pop()
    for row, line in enumerate(lines, 1):
        text = line.rstrip("\n")
        if len(text) <= MAX: continue
        indent = len(text) - len(text.lstrip())
        row_toks = [t for t in toks if t.start[0] == row and t.type not in SKIP]
        # 1. a comment line: re-flow it
        if text.lstrip().startswith("#") and not text.lstrip().startswith("#|"):
            body = text.lstrip()[1:].strip()
            new = textwrap.wrap(body, MAX - indent - 2, break_long_words=False, break_on_hyphens=False)
            if len(new) > 1:
                lines[row - 1] = "".join(" " * indent + "# " + w + "\n" for w in new)
                return "".join(lines)
            continue
        if not row_toks: continue  # inside a multi-line string
        top = [t for t in row_toks if not depth_at.get(t.start)] if not depth_at.get(row_toks[0].start) else []
        # 1b. `from m import a, b, ...`: put the names in parentheses (rule 4 then breaks them)
        if top and top[0].string == "from" and not any(t.string == "(" for t in row_toks):
            imp = next((t for t in top if t.type == tokenize.NAME and t.string == "import"), None)
            com = [t for t in row_toks if t.type == tokenize.COMMENT]
            if imp:
                end = com[0].start[1] if com else len(text)
                names = text[imp.end[1]:end].strip()
                lines[row - 1] = text[:imp.end[1]] + " (" + names + ")" + (" " + com[0].string if com else "") + "\n"
                return "".join(lines)
        # 2. a one-line compound statement (`if x: y`): its body onto the next line
        if top and top[0].string in COMPOUND:
            colon = next((t for t in top if t.type == tokenize.OP and t.string == ":"), None)
            after = [t for t in row_toks if colon and t.start > colon.start and t.type != tokenize.COMMENT]
            if after and top[0].string != "lambda":
                lines[row - 1] = text[:colon.end[1]] + "\n" + " " * (indent + 4) + text[after[0].start[1]:] + "\n"
                return "".join(lines)
        # 3. statements separated by `;`: one per line
        semis = [t for t in top if t.type == tokenize.OP and t.string == ";"]
        if semis and row_toks[0].start[1] == indent:
            t = next((x for x in reversed(semis) if x.end[1] <= MAX), semis[0])
            nxt = next(x for x in row_toks if x.start > t.start)
            lines[row - 1] = text[:t.start[1]].rstrip() + "\n" + " " * indent + text[nxt.start[1]:] + "\n"
            return "".join(lines)
        # 4. break after the last comma inside brackets that keeps the line within MAX
        cands = []
        for k, t in enumerate(row_toks):
            if t.type == tokenize.OP and t.string == "," and t.end[1] <= MAX and depth_at.get(t.start) \
               and not in_for_target(toks, depth_at, t):
                rest = row_toks[k + 1:]
                if rest and not all(r.type == tokenize.COMMENT or r.string in CLOSE for r in rest):
                    cands.append((t, rest[0]))
        if cands:
            t, nxt = cands[-1]
            opener = depth_at[t.start][-1]
            tail = text[nxt.start[1]:]
            col = opener[1] + 1  # line up with the bracket's first item (as the lines already there do)
            if col > 60 and col + len(tail) > MAX: col = indent + 4 if opener[0] == row else indent
            lines[row - 1] = text[:t.end[1]].rstrip() + "\n" + " " * col + tail + "\n"
            return "".join(lines)
        # 4b. break before a keyword operator or `+` inside brackets
        ops = [t for t in row_toks if depth_at.get(t.start) and t.start[1] <= MAX - 1 and t.start[1] > indent
               and (t.type == tokenize.NAME and t.string in ("if", "else", "and", "or", "for") or t.string == "+")
               and depth_at[t.start][-1][1] + 1 < t.start[1]]
        if ops:
            t = ops[-1]
            opener = depth_at[t.start][-1]
            col = opener[1] + 1 if opener[1] + 1 <= 60 else indent + 4
            lines[row - 1] = text[:t.start[1]].rstrip() + "\n" + " " * col + text[t.start[1]:] + "\n"
            return "".join(lines)
        # 5. split a long string literal inside brackets
        for t in row_toks:
            one_line = t.start[0] == t.end[0]
            if t.type == tokenize.STRING and one_line and t.end[1] > MAX - 8 and t.start[1] < MAX - 20 \
               and depth_at.get(t.start):
                parts = string_split(t.string, MAX - t.start[1])
                if parts:
                    a, b = parts
                    lines[row - 1] = (text[:t.start[1]] + a + "\n" + " " * t.start[1] + b + text[t.end[1]:] + "\n")
                    return "".join(lines)
        # 6. a plain statement with a trailing comment: put the comment on the line above
        com = [t for t in row_toks if t.type == tokenize.COMMENT]
        if com and not depth_at.get(row_toks[0].start) and row_toks[0].start[1] == indent \
           and not depth_at.get(com[0].start) and com[0].start[1] <= MAX + 1:
            c = com[0]
            lines[row - 1] = " " * indent + c.string + "\n" + text[:c.start[1]].rstrip() + "\n"
            return "".join(lines)
        # 7. a one-line `return x`, `name = x` or docstring: put the value in parentheses (rules 4-5 then break it)
        ends_here = any(t.type == tokenize.NEWLINE and t.start[0] == row for t in toks)
        if top and ends_here and row_toks[0].start[1] == indent and not semis:
            com = [t for t in row_toks if t.type == tokenize.COMMENT]
            end = com[0].start[1] if com else len(text)
            first = top[0]
            eq = next((t for t in top if t.type == tokenize.OP and t.string in ("=", "+=")), None)
            start = (first.end[1] if first.string == "return" and len(row_toks) > 1 else
                     first.start[1] if first.type == tokenize.STRING and len(top) == 1 + len(com) else
                     eq.end[1] if eq and first.type == tokenize.NAME and first.string not in COMPOUND else None)
            if start is not None:
                value = text[start:end].strip()
                if value and not (value[0] in OPEN and value[-1] in CLOSE):
                    pad = " " if first.type != tokenize.STRING else ""
                    lines[row - 1] = (text[:start].rstrip() + pad + "(" + value + ")"
                                      + (" " + com[0].string if com else "") + "\n")
                    if first.type == tokenize.STRING: lines[row - 1] = " " * indent + lines[row - 1].lstrip()
                    return "".join(lines)
    return None


def wrap_source(src):
    "src with its long lines wrapped as far as the rules allow (the AST unchanged)."
    try: ast.parse(src)
    except SyntaxError: return src
    new, n = src, 0
    while n < 500:
        nxt = wrap_once(new)
        if nxt is None or not same_ast(src, nxt): break
        if nxt == new: break
        new, n = nxt, n + 1
    return new


def long_lines(src):
    return [line for line in src.splitlines() if len(line) > MAX]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args(argv)
    for path in map(Path, a.files):
        text = path.read_text()
        if path.suffix == ".ipynb":
            nb = json.loads(text)
            changed, left = 0, []
            for c in nb["cells"]:
                if c["cell_type"] != "code": continue
                src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                new = wrap_source(src)
                if new != src: c["source"] = new.splitlines(keepends=True); changed += 1
                left += long_lines(new)
            out = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
        else:
            out = wrap_source(text); changed = int(out != text); left = long_lines(out)
        print(f"{path}: {changed} cell(s) changed, {len(left)} long line(s) left")
        for line in left: print("   ", line.strip()[:100])
        if changed and not a.dry_run: path.write_text(out)


if __name__ == "__main__":
    sys.exit(main())

"""Reading a student's file without running it: syntax errors, where each exercise function is
defined, and exercise functions that call into the package instead of computing the answer.

The grader reads every file with `ast` before any of it runs. It finds

* the cells (or the .py file) that do not parse: their exercises are reported as "syntax error",
  with the file, the cell and the line;
* the last top-level definition of every exercise function (a `def`, or a name bound to a
  lambda or to another function of the file), so that the grader knows which exercises a file
  attempts even when running it fails;
* every name an exercise function reads that resolves to `uvit_numpy` or `uvit_torch`, through
  the file's imports (`import uvit_numpy.functional as F`, `from uvit_numpy.functional import
  layer_norm`, a local import, `__import__("uvit_numpy")`), through module-level names bound to
  the package's objects, and through the file's own helper functions that the exercise calls.
  A use is allowed when the exercise lists it in `Exercise.allowed` (the notebooks that let
  students use `uvit_numpy.functional`) and it is not a function of the exercise's own name: the
  reference is never allowed. Anything else makes the exercise "uses the reference".

This reads the code a student wrote in plain sight; it is no defence against code written to
hide what it calls (strings built at run time, `exec`). See the README's section on grading.
"""

import ast
import builtins
import re
from dataclasses import dataclass, field

from .notebooks import student_code, syntax_error_message

PACKAGES = ("uvit_numpy", "uvit_torch")
_DEF_LINE = re.compile(r"^\s*(?:async\s+)?def\s+(\w+)\s*\(|^(\w+)\s*=", re.MULTILINE)
_MODULE_PATH = re.compile(r"^[A-Za-z_][\w.]*$")


@dataclass
class Use:
    """One place where an exercise function reads the package: what, where, the line."""

    name: str          # the package object, e.g. "uvit_numpy.functional.layer_norm"
    label: str         # the cell ("code cell 3 (`...`)") or the .py file's name
    lineno: int
    line: str          # the source line, stripped

    def describe(self):
        return f"`{self.name}` ({self.label}, line {self.lineno}: `{self.line}`)"


@dataclass
class Reading:
    """What `read_file` found. Every dict is keyed by exercise name."""

    syntax_errors: list = field(default_factory=list)   # messages, one per cell that fails
    defined_in: dict = field(default_factory=dict)      # name -> label of its last definition
    broken: dict = field(default_factory=dict)          # name -> syntax error of its cell
    uses: dict = field(default_factory=dict)            # name -> [Use] the exercise may not make


def read_file(path, exercises):
    """Read the student's file at `path` for the exercises {name: Exercise}; a `Reading`."""
    reading = Reading()
    scope = _ModuleScope()
    for label, filename, code in student_code(path):
        try:
            tree = ast.parse(code, filename)
        except SyntaxError as exc:
            message = syntax_error_message(exc, label)
            reading.syntax_errors.append(message)
            for m in _DEF_LINE.finditer(code):
                name = m.group(1) or m.group(2)
                if name in exercises:
                    reading.defined_in[name] = label
                    reading.broken[name] = message
                    scope.forget(name)
            continue
        lines = code.splitlines()
        for name in scope.read(tree.body, label, lines):
            if name in exercises:
                reading.defined_in[name] = label
                reading.broken.pop(name, None)
    for name in reading.defined_in:
        if name in reading.broken or name not in scope.defs:
            continue
        ex = exercises[name]
        bad = [u for u in scope.uses_of(name)
               if u.name not in ex.allowed or u.name.rsplit(".", 1)[-1] == name]
        if bad:
            reading.uses[name] = bad
    return reading


def is_package(qualname):
    return qualname.split(".", 1)[0] in PACKAGES


class _ModuleScope:
    """The file's module-level names, read statement by statement in the order they run.

    aliases: name -> the package object it is bound to ("uvit_numpy.functional");
    defs:    name -> (node, label, lines) of the name's last binding to code of the file (a def,
             a class, a lambda or another expression), whose uses count when it is called;
    stars:   modules imported with `*`; names: every name bound at module level.
    """

    def __init__(self):
        self.aliases, self.defs, self.stars, self.names = {}, {}, [], set()
        self._cache = {}

    def forget(self, name):
        self.aliases.pop(name, None)
        self.defs.pop(name, None)

    def read(self, body, label, lines):
        """Record the bindings of the statements `body`; return the names bound."""
        bound = []
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name, target in _imported(node):
                    self.forget(name)
                    if target == "*":
                        self.stars.append(node.module)
                    elif is_package(target):
                        self.aliases[name] = target
                    bound.append(name)
                    self.names.add(name)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.forget(node.name)
                self.defs[node.name] = (node, label, lines)
                bound.append(node.name)
                self.names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
                for name in names:
                    self.forget(name)
                    if node.value is None:
                        continue
                    chain = _dotted(node.value)
                    head = chain.split(".", 1)[0] if chain else None
                    if chain and head in self.aliases:          # `ln = F.layer_norm`
                        self.aliases[name] = self.aliases[head] + chain[len(head):]
                    else:                                       # a lambda, a function, ...
                        self.defs[name] = (node.value, label, lines)
                bound.extend(names)
                self.names.update(names)
            elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                for part in ("body", "orelse", "finalbody"):
                    bound += self.read(getattr(node, part, []), label, lines)
                for handler in getattr(node, "handlers", []):
                    bound += self.read(handler.body, label, lines)
        return bound

    def uses_of(self, name):
        """Every package object that calling the module-level `name` can reach, with where."""
        found, seen, todo = [], set(), [name]
        while todo:
            current = todo.pop()
            if current in seen or current not in self.defs:
                continue
            seen.add(current)
            uses, helpers = self._direct(current)
            found += uses
            todo += [n for n in helpers if n not in seen]
        return found

    def _direct(self, name):
        """(uses, helpers) of the definition of `name` itself, computed once."""
        if name not in self._cache:
            node, label, lines = self.defs[name]
            visitor = _Uses(self, label, lines, node)
            visitor.visit(node)
            self._cache[name] = (visitor.uses, visitor.helpers)
        return self._cache[name]


def _imported(node):
    """[(name bound, what it is bound to)] for an import statement."""
    if isinstance(node, ast.Import):
        return [(a.asname or a.name.split(".", 1)[0], a.name if a.asname else
                 a.name.split(".", 1)[0]) for a in node.names]
    if node.level or not node.module:                   # a relative import: not the package
        return [(a.asname or a.name, "") for a in node.names if a.name != "*"]
    return [("*" if a.name == "*" else a.asname or a.name,
             "*" if a.name == "*" else f"{node.module}.{a.name}") for a in node.names]


def _dotted(node):
    """'F.layer_norm' for an attribute chain on a name, 'F' for a name; None otherwise."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


class _Uses(ast.NodeVisitor):
    """The package objects one definition (`top`) reads, and the module-level helpers it uses."""

    def __init__(self, scope, label, lines, top):
        self.scope, self.label, self.lines = scope, label, lines
        self.uses, self.helpers = [], []
        self.local_aliases, self.locals, self.docstrings = {}, set(), set()
        if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            self._collect_locals(top)

    def _collect_locals(self, top):
        """The names the definition binds itself (arguments, assignments, local imports), and
        its docstrings (which may name the package without using it)."""
        for node in ast.walk(top):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                    and node.body and isinstance(node.body[0], ast.Expr):
                self.docstrings.add(id(node.body[0].value))
            if isinstance(node, ast.arg):
                self.locals.add(node.arg)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                self.locals.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                    and node is not top:
                self.locals.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for name, target in _imported(node):
                    if target == "*":
                        if is_package(node.module or ""):
                            self._add(node, f"{node.module}.*")
                    elif is_package(target):
                        self.local_aliases[name] = target
                    else:
                        self.locals.add(name)

    def _add(self, node, name):
        lineno = getattr(node, "lineno", 1)
        line = self.lines[lineno - 1].strip() if 0 < lineno <= len(self.lines) else ""
        self.uses.append(Use(name, self.label, lineno, line))

    def _resolve(self, chain, node):
        head, _, rest = chain.partition(".")
        tail = f".{rest}" if rest else ""
        if head in self.local_aliases:
            self._add(node, self.local_aliases[head] + tail)
        elif head in self.locals:
            return
        elif head in self.scope.aliases:
            self._add(node, self.scope.aliases[head] + tail)
        elif head in self.scope.defs:
            self.helpers.append(head)
        elif head not in self.scope.names and not hasattr(builtins, head):
            for module in self.scope.stars:                 # `from uvit_numpy.functional import *`
                if is_package(module):
                    self._add(node, f"{module}.{chain}")

    def visit_Attribute(self, node):
        chain = _dotted(node)
        if chain is None:
            self.generic_visit(node)
        elif isinstance(node.ctx, ast.Load):
            self._resolve(chain, node)

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load):
            self._resolve(node.id, node)

    def visit_Constant(self, node):
        """A module path in a string (`__import__("uvit_numpy")`, `sys.modules[...]`)."""
        if isinstance(node.value, str) and id(node) not in self.docstrings \
                and _MODULE_PATH.match(node.value) and is_package(node.value):
            self._add(node, node.value)

# Two commands do all the set-up: `make run` and `make test`. Each builds .venv when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config.example.yaml
# `make run` listens on this machine only; `make run HOST=0.0.0.0` to reach it from elsewhere.
HOST ?= 127.0.0.1

# Exact versions and hashes of every dependency (Linux, Python 3.11: the image's), installed
# before the project itself with --no-deps, so every venv and image gets the same set.
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock

.PHONY: run test test-fast lint clean audit lock

run: $(VENV)/.installed-run
	$(BIN)/mimeeq-connector serve --config $(CONFIG) --host $(HOST)

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

# Under a minute, for the edit-test loop: the unit and contract tests (the store's on SQLite and
# PostgreSQL, every adapter's conformance). `make test` runs everything, as CI does.
test-fast: $(VENV)/.installed-dev
	$(BIN)/pytest -m "unit or contract"

# Known vulnerabilities in the installed packages (pip-audit, against PyPI's advisory data). A
# vulnerability fails; a database that cannot be reached (an offline machine) only warns.
audit: $(VENV)/.installed-dev
	@rm -f $(VENV)/audit.json
	@$(BIN)/pip-audit --skip-editable --progress-spinner off --format json \
		--output $(VENV)/audit.json 2> $(VENV)/audit.log; \
	$(BIN)/python -c "$$AUDIT_REPORT" $(VENV)/audit.json $$? $(VENV)/audit.log

define AUDIT_REPORT
import json, sys
report, status, log = sys.argv[1], int(sys.argv[2]), open(sys.argv[3]).read()
unreachable = "WARNING: dependency audit skipped: the vulnerability database cannot be reached"
try:
    deps = json.load(open(report))["dependencies"]
except (OSError, ValueError, KeyError):
    if any(word in log for word in ("ConnectionError", "NameResolution", "Timeout", "SSLError")):
        sys.exit(print(unreachable, file=sys.stderr))
    sys.exit(log or f"pip-audit failed ({status})")
audited = [d for d in deps if "skip_reason" not in d]
found = [(d, v) for d in audited for v in d["vulns"]]
for dep, vuln in found:
    fixed = ", ".join(vuln["fix_versions"]) or "no fixed release yet"
    print(f"{dep['name']} {dep['version']}: {vuln['id']} (fixed in {fixed})", file=sys.stderr)
if found:
    sys.exit(f"dependency audit: {len(found)} known vulnerabilities")
if not audited:  # every package "not found": the advisory API answered nothing useful
    sys.exit(print(unreachable + " (no package could be looked up)", file=sys.stderr))
print(f"dependency audit: {len(audited)} packages, no known vulnerabilities"
      f" ({len(deps) - len(audited)} not looked up)")
endef
export AUDIT_REPORT

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	touch $@

$(VENV)/.installed-run: $(VENV)/.created $(LOCK) pyproject.toml
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check  # a lock that no longer satisfies pyproject.toml: run `make lock`
	touch $@

$(VENV)/.installed-dev: $(VENV)/.created $(DEV_LOCK) pyproject.toml
	$(BIN)/pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	touch $@ $(VENV)/.installed-run

# Re-resolve both lock files to the newest versions pyproject.toml allows (README: "Updating
# dependencies"). The dev lock is constrained by the runtime one, so the two never disagree on a
# version; markers are resolved for this machine, hence the Python 3.11 check.
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --upgrade \
	--generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links

lock: $(VENV)/.installed-dev
	@$(BIN)/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "make lock needs Python 3.11, the image'"'"'s")'
	$(PIP_COMPILE) --output-file $(LOCK) pyproject.toml
	$(PIP_COMPILE) --extra dev --constraint $(LOCK) --output-file $(DEV_LOCK) pyproject.toml

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache *.egg-info

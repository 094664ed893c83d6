# batv — see README.md. Every target works on a fresh machine with Go 1.26.

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
BIN       := bin/batv
FUZZTIME  ?= 30s
FUZZMINTIME ?= 10s
# urfave/cli's man and markdown writers (and the markdown library under
# them, initialised at every start) are left out: batv writes its own man
# pages. 0.7-1.0 MiB less peak memory at 256 milter connections
# (docs/performance.md, Memory). A plain go build works too, with them.
TAGS      := urfave_cli_no_docs
STATICCHECK_VERSION := v0.8.2
NFPM_VERSION := v2.48.0

.PHONY: all build test check fuzz bench bench-storm clean man docs deb fuzz-short soak soak-short

all: build

build:
	$(GO) build -tags '$(TAGS)' -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/batv

# The README's test command. The end-to-end tests (a real Postfix and
# Sendmail; postmap, systemd-analyze, groff) run when what they need is
# installed and, for Postfix and Sendmail, as root; they skip otherwise
# (mandatory in CI, which sets BATV_E2E=1). go test prints "ok" for a
# package that skipped every test, so each skip is noted in a file
# (BATV_SKIP_REPORT, postfixtest.SkipOrFail) and the lines after go test say
# what did not run and the command that installs what it needs. -shuffle=on
# also keeps go test from caching results: every run notes its skips.
# Sendmail is found where .ci/install-deps unpacks it, .ci/sendmail.
# The tests that measure stack frames (build tag !race) run once more
# without the race detector, whose instrumentation makes frames larger.
SENDMAIL_ROOT = $(or $(BATV_SENDMAIL_ROOT),$(if $(wildcard .ci/sendmail/usr),$(CURDIR)/.ci/sendmail))
test:
	@report=$$(mktemp); echo "$(GO) test -tags '$(TAGS)' -race -shuffle=on ./..."; \
	BATV_SKIP_REPORT=$$report BATV_SENDMAIL_ROOT='$(SENDMAIL_ROOT)' $(GO) test -tags '$(TAGS)' -race -shuffle=on ./...; status=$$?; \
	if [ -s "$$report" ]; then \
		echo; \
		echo "*** SKIPPED: $$(wc -l < $$report) end-to-end tests did not run; the \"ok\" of their packages does not cover them:"; \
		sed 's|^$(CURDIR)/||' $$report | awk -F'\t' '{n[$$1]++} END {for (p in n) printf "***   %s: %d\n", p, n[p]}' | sort; \
		echo "*** why:"; cut -f3 $$report | sort | uniq -c | sort -rn | sed 's/^ */***   /'; \
		echo "*** To run them, install what they need (as CI does) and run the tests as root:"; \
		if [ "$$(id -u)" -eq 0 ]; then echo "***   .ci/install-deps && make test"; \
		else echo "***   sudo .ci/install-deps && sudo env PATH=\"\$$PATH\" make test"; fi; \
	fi; rm -f $$report; \
	echo "$(GO) test -tags '$(TAGS)' -count=1 -run StacksStaySmall ./milter/"; \
	$(GO) test -tags '$(TAGS)' -count=1 -run StacksStaySmall ./milter/ || status=1; exit $$status

check:
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }

# Runs every fuzz target for FUZZTIME each (go test allows one target per run).
# FUZZTIME is a duration or an execution count (100000x). FUZZMINTIME bounds
# the minimisation of each new input, which otherwise may take a minute.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		for target in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "fuzz $$pkg $$target ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINTIME) $$pkg; \
		done; \
	done

# The short fuzz run CI makes: every target for 100,000 executions. A count,
# not a duration: at the end of a duration Go's fuzzing coordinator can
# report "context deadline exceeded" and fail a target that found nothing
# (a race in the coordinator, likeliest while a worker is minimising; seen
# in CI on FuzzSession). A count sets no deadline.
fuzz-short:
	$(MAKE) fuzz FUZZTIME=100000x FUZZMINTIME=5s

# The soak test (internal/soak): the batv binary under 1,000 concurrent MTA
# sessions on loopback for SOAK, memory, goroutines and descriptors sampled
# and required flat after warm-up. make soak runs the 30 minutes of the
# figures in docs/robustness.md; CI runs make soak-short (one minute).
# SOAK_OUT names a file for the table of samples.
SOAK      ?= 30m
SOAK_OUT  ?=
soak:
	BATV_SOAK=$(SOAK) BATV_SOAK_OUT=$(SOAK_OUT) $(GO) test -count=1 -timeout 0 -run '^TestSoak$$' -v ./internal/soak/

soak-short:
	$(MAKE) soak SOAK=1m

# The micro-benchmarks of every package that has some, then a short load
# run of the milter daemon against a do-nothing go-milter reference, side by
# side (internal/benchrun; docs/performance.md). BENCHFLAGS go to
# benchrun, e.g. BENCHFLAGS='-runs 1 -messages 2000' for a quicker look.
bench: build
	$(GO) test -run '^$$' -bench . -benchmem $$(grep -rl --include='*_test.go' '^func Benchmark' . | xargs -n1 dirname | sort -u)
	$(GO) build -o bin/refmilter ./internal/refmilter
	$(GO) run ./internal/benchrun -batv $(BIN) -ref bin/refmilter $(BENCHFLAGS)

# The storm benchmark of issue 15 (internal/stormbench): one private Postfix
# under a flood of bounces, untagged and to forged tags, one per SMTP
# session, mixed with legitimate mail, once per scenario: Postfix alone, the
# blanket check_sender_access <> REJECT, batv's milter, the policy front end.
# Prints a markdown table per concurrency level, each figure also as a ratio
# to the blanket rule in the same run. Needs root and Postfix. STORMFLAGS go
# to the benchmark, e.g. STORMFLAGS='-runs 5 -sessions 5000 -concurrency
# 20,100 -legit 10 -out storm.md'; -legit 100 measures legitimate mail alone.
STORMFLAGS ?=
bench-storm:
	BATV_STORM=1 $(GO) test -count=1 -timeout 0 -run '^TestStorm$$' -v ./internal/stormbench/ -args $(STORMFLAGS)

# docs/batv.toml, the annotated configuration reference, is written from
# the reference in internal/daemon/reference_data.go: edit that, then run
# make docs (a test fails while the two differ).
docs:
	$(GO) run ./cmd/batv generate-reference docs/batv.toml

# The man pages: man/batv.8 from the command line, man/batv.toml.5 from
# docs/batv.toml. View them with man -l man/batv.8.
man:
	$(GO) run -ldflags '$(LDFLAGS)' ./cmd/batv generate-man man

# The Debian package, bin/batv_VERSION_ARCH.deb, built with goreleaser's nfpm
# (dist/nfpm.yaml) through the Go module proxy; dist/check-deb.sh installs
# and checks it (CI does). The binary is static (CGO_ENABLED=0), so the
# package declares no libc dependency. The configuration it ships is
# docs/batv.toml with no domain: batv signs nothing until one is set.
# DEB_VERSION is the tag without its "v" (v1.2.0-3-gabc: 1.2.0+3.gabc), or
# 0~gitDATE.COMMIT before the first tag. GOARCH=arm64 make deb cross-builds.
DEB_VERSION ?= $(shell v=$$(git describe --tags --match 'v[0-9]*' 2>/dev/null) && echo "$$v" | sed 's/^v//; s/-\([0-9]*\)-g/+\1.g/' || git log -1 --date=format:%Y%m%d --format='0~git%cd.%h' 2>/dev/null || echo 0~dev)
DEB_ARCH  ?= $(shell $(GO) env GOARCH)
DEB_MAINTAINER ?= $(shell git log -1 --format='%an <%ae>' 2>/dev/null || echo 'batv <root@localhost>')
DEB       ?= bin/batv_$(DEB_VERSION)_$(DEB_ARCH).deb
# The date of the man pages and of the files in the package: the commit's.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null)
export SOURCE_DATE_EPOCH
HOSTGO    := GOOS= GOARCH= $(GO)

deb:
	rm -rf bin/deb && mkdir -p bin/deb
	CGO_ENABLED=0 $(GO) build -tags '$(TAGS)' -trimpath -ldflags '$(LDFLAGS) -s -w' -o bin/deb/batv ./cmd/batv
	$(HOSTGO) run -ldflags '$(LDFLAGS)' ./cmd/batv generate-man bin/deb
	gzip -9n bin/deb/batv.8 bin/deb/batv.toml.5
	for sh in bash zsh fish; do $(HOSTGO) run ./cmd/batv completion $$sh > bin/deb/completion.$$sh || exit 1; done
	sed 's|^domains = \["example.com"\]$$|domains = []  # set your domains: see /usr/share/doc/batv/README.Debian|' docs/batv.toml > bin/deb/batv.toml
	@test "$$(diff docs/batv.toml bin/deb/batv.toml | grep -c '^>')" = 1 || { echo "deb: docs/batv.toml must have one line domains = [\"example.com\"] to empty"; exit 1; }
	DEB_VERSION='$(DEB_VERSION)' DEB_ARCH='$(DEB_ARCH)' DEB_MAINTAINER='$(DEB_MAINTAINER)' \
		$(HOSTGO) run github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION) package --config dist/nfpm.yaml --packager deb --target $(DEB)

clean:
	rm -rf bin man

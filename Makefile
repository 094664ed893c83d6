# batv — see README.md. Every target works on a fresh machine with Go 1.26.

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
BIN       := bin/batv
FUZZTIME  ?= 30s
FUZZMINTIME ?= 10s
STATICCHECK_VERSION := v0.8.2

.PHONY: all build test check fuzz bench bench-storm clean man fuzz-short soak soak-short

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/batv

# The README's test command. End-to-end tests against a real Postfix run
# when Postfix is installed (mandatory in CI, which sets BATV_E2E=1).
test:
	$(GO) test -race -shuffle=on ./...

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

# The soak test (milter/soak): the batv binary under 1,000 concurrent MTA
# sessions on loopback for SOAK, memory, goroutines and descriptors sampled
# and required flat after warm-up. make soak runs the 30 minutes of the
# figures in docs/robustness.md; CI runs make soak-short (one minute).
# SOAK_OUT names a file for the table of samples.
SOAK      ?= 30m
SOAK_OUT  ?=
soak:
	BATV_SOAK=$(SOAK) BATV_SOAK_OUT=$(SOAK_OUT) $(GO) test -count=1 -timeout 0 -run '^TestSoak$$' -v ./milter/soak/

soak-short:
	$(MAKE) soak SOAK=1m

# The micro-benchmarks of every package that has some, then a short load
# run of the milter daemon against a do-nothing go-milter reference, side by
# side (milter/internal/benchrun; docs/performance.md). BENCHFLAGS go to
# benchrun, e.g. BENCHFLAGS='-runs 1 -messages 2000' for a quicker look.
bench: build
	$(GO) test -run '^$$' -bench . -benchmem $$(grep -rl --include='*_test.go' '^func Benchmark' . | xargs -n1 dirname | sort -u)
	$(GO) build -o bin/refmilter ./milter/internal/refmilter
	$(GO) run ./milter/internal/benchrun -batv $(BIN) -ref bin/refmilter $(BENCHFLAGS)

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

# The man pages: man/batv.8 from the command line, man/batv.toml.5 from
# docs/batv.toml. View them with man -l man/batv.8.
man:
	$(GO) run -ldflags '$(LDFLAGS)' ./cmd/batv generate-man --reference docs/batv.toml man

clean:
	rm -rf bin man

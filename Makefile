# Signal Blueprints — build, test, run.
#
#   make deps    install the Debian packages the project needs (skips what is present)
#   make         build/blueprint (CLI), the libraries build/libblueprint.so and .a (mapping,
#                include/blueprint.h) and build/libblueprint-service.so and .a (delivery and the
#                service, include/blueprint_service.h), build/lua/blueprint_core.so (Lua module
#                for the busted specs)
#   make install PREFIX=/usr/local DESTDIR=…   the CLI, the libraries, the headers,
#                blueprint.pc and blueprint-service.pc, the default blueprints and the web console
#                (make uninstall removes them)
#   make test    deps + build + every suite (C unit tests, ASan/UBSan build, busted specs,
#                golden dry-run fixtures); ends with "N passed, N failed"
#   make run     start `blueprint serve` on 127.0.0.1:8084 (with the local emulator as the
#                ActiveCampaign account) and print a token and the curl commands to try it
#   make demo    one-shot: dry-run the example events, then deliver them to the emulator
#   make bench   benchmarks against plain Lua+cjson, Node and a C floor; writes BENCHMARKS.md

CC      ?= cc
PKGS    := lua5.4 yaml-0.1 libcurl sqlite3 libmicrohttpd libcrypto rdkafka
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -fPIC -fno-semantic-interposition -Iinclude \
           $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
# Programs link Debian's static liblua5.4.a: calls into the VM and its API
# skip the PLT and the PIC indirections (~10% of mapping CPU time).  The Lua
# module for busted must not (it runs inside lua5.4's own VM), so it links
# no Lua at all.
LUA_LIBS := $(shell pkg-config --variable=libdir lua5.4 2>/dev/null)/liblua5.4.a -ldl
LDLIBS  := $(LUA_LIBS) $(shell pkg-config --libs yaml-0.1 libcurl sqlite3 libmicrohttpd libcrypto rdkafka 2>/dev/null) -lpthread -lm
SANFLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

# The libraries for embedders (the version is BP_VERSION_* in
# include/blueprint.h; each soname follows its MAJOR):
#   libblueprint.so.MAJOR          the mapping core (include/blueprint.h): Lua
#                                  5.4, libyaml and the C library only
#   libblueprint-service.so.MAJOR  delivery, serve, cluster
#                                  (include/blueprint_service.h): links
#                                  libblueprint and the network packages
# Each exports what its header marks BP_API, nothing else: the service's
# objects are compiled with -fvisibility=hidden; the mapping library's with
# the default visibility and linked with a version script (build/libblueprint.map,
# written by scripts/version-script.sh) that exports its API as version
# BLUEPRINT and, as BLUEPRINT_PRIVATE, only the internal functions the service
# library calls in it (no header declares them).  Debian's liblua5.4.a is
# not PIC (it cannot go into a shared object), so the .so links the shared
# liblua5.4.so.0; the programs keep the static Lua.
BP_VERSION   := $(shell sed -n 's/^\#define BP_VERSION_[A-Z]* //p' include/blueprint.h | paste -sd.)
BP_SOVERSION := $(firstword $(subst ., ,$(BP_VERSION)))
CORE_PKGS    := lua5.4 yaml-0.1
NET_PKGS     := libcurl sqlite3 libmicrohttpd libcrypto rdkafka
CORE_SO_LIBS := $(shell pkg-config --libs $(CORE_PKGS) 2>/dev/null) -lpthread -ldl -lm
NET_SO_LIBS  := $(shell pkg-config --libs $(NET_PKGS) 2>/dev/null) -lpthread -lm
LIB_CFLAGS   := -fvisibility=hidden
PUBLIC_HDRS  := include/blueprint.h include/blueprint_service.h

# make install PREFIX=/usr/local DESTDIR=…
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
DATADIR    ?= $(PREFIX)/share
# serve finds the installed web console there (console.c)
CFLAGS     += -DBP_DATADIR='"$(DATADIR)"'
# the CLI loads libblueprint-service from there once installed (cli.c)
CFLAGS     += -DBP_LIBDIR='"$(LIBDIR)"'

# The core maps events (libblueprint); NET adds delivery and the service
# (libblueprint-service: libcurl, SQLite, libmicrohttpd, libcrypto,
# librdkafka), with the CLI's service commands (cli.c built as
# bp_service_main).  build/blueprint links the core only, so that an
# author's dry-run does not pay for loading the network packages (3 ms
# rather than 13 to start); it loads libblueprint-service for its deliver,
# dlq, serve, token and rotate-key commands.
CORE_ONLY := alloc buffer log clock json yaml watchdog pattern metered sandbox luajson helpers consent envelope blueprint config request cache answers luarequest steps engine batch reader \
             decode version
NET     := transport classify ratelimit store batchstore fingerprint deliver_job deliver_batch deliver_send deliver_tenant deliver crypto auth \
           metrics serverdb integrationsdb sealing configdoc audit signins revisions catalog configrecord blueprintrecord unopened live registry \
           reload verify intake kafkaconf clusterslots clusterview clusterconsumer clusterpace cluster server admin_api events_api \
           live_stream console_api health_api console diff editor
CORE    := $(CORE_ONLY) $(NET)
CORE_SRC := $(CORE:%=src/%.c)
CORE_OBJS := $(CORE_ONLY:%=build/obj/%.o)
NET_OBJS  := $(NET:%=build/obj/%.o) build/obj/cli-service.o
HDRS    := $(PUBLIC_HDRS) src/internal.h src/service.h src/server.h src/cluster.h src/engine_state.h src/deliver_loop.h

DEB_PKGS := build-essential pkg-config liblua5.4-dev lua5.4 libyaml-dev lua-busted \
            libcurl4-openssl-dev libsqlite3-dev sqlite3 libmicrohttpd-dev libssl-dev openssl librdkafka-dev kcat curl lua-cjson nodejs golang-go \
            libjs-codemirror chromium chromium-driver python3-selenium

.PHONY: all deps bench-deps fuzz-deps test run demo bench clean unit-tests asan tsan fuzz fuzzers install uninstall
LIBS := build/libblueprint.a build/libblueprint.so build/libblueprint-service.a build/libblueprint-service.so
all: build/blueprint $(LIBS) build/lua/blueprint_core.so build/ac-emulator build/kafka-mock-cluster

# Install the Debian packages in $(1) that are missing (sudo when not root).
define install_missing
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
endef

deps:
	$(call install_missing,$(DEB_PKGS))

build/obj/%.o: src/%.c $(HDRS) Makefile | build/obj
	$(CC) $(CFLAGS) $(LIB_CFLAGS) -c $< -o $@

# the mapping core's objects: exported by the version script instead (above)
$(CORE_OBJS): LIB_CFLAGS :=

build/obj/cli-service.o: src/cli.c $(HDRS) Makefile | build/obj
	$(CC) $(CFLAGS) $(LIB_CFLAGS) -DBP_SERVICE_MAIN -c $< -o $@

build/obj/cli-light.o: src/cli.c $(HDRS) Makefile | build/obj
	$(CC) $(CFLAGS) -DBP_LIGHT -c $< -o $@

build/obj build/lua build/asan:
	mkdir -p $@

build/libblueprint.a: $(CORE_OBJS)
	rm -f $@ && ar rcs $@ $^

build/libblueprint-service.a: $(NET_OBJS)
	rm -f $@ && ar rcs $@ $^

build/libblueprint.map: scripts/version-script.sh include/blueprint.h $(CORE_OBJS) $(NET_OBJS)
	scripts/version-script.sh include/blueprint.h $(CORE_OBJS) -- $(NET_OBJS) > $@.tmp && mv $@.tmp $@

build/libblueprint.so.$(BP_VERSION): $(CORE_OBJS) build/libblueprint.map
	$(CC) $(CFLAGS) -shared -Wl,-soname,libblueprint.so.$(BP_SOVERSION) -Wl,-z,defs -Wl,--as-needed \
	  -Wl,--version-script=build/libblueprint.map -o $@ $(CORE_OBJS) $(CORE_SO_LIBS)

build/libblueprint-service.so.$(BP_VERSION): $(NET_OBJS) build/libblueprint.so
	$(CC) $(CFLAGS) -shared -Wl,-soname,libblueprint-service.so.$(BP_SOVERSION) -Wl,-z,defs -Wl,--as-needed \
	  -Wl,-rpath,'$$ORIGIN' -o $@ $(NET_OBJS) -Lbuild -lblueprint $(NET_SO_LIBS)

build/%.so: build/%.so.$(BP_VERSION)
	ln -sf $*.so.$(BP_VERSION) build/$*.so.$(BP_SOVERSION)
	ln -sf $*.so.$(BP_SOVERSION) $@

# $(call pc_file,NAME,LIBS_PRIVATE): PREFIX/lib/pkgconfig/NAME.pc from src/NAME.pc.in
pc_file = sed -e 's|@PREFIX@|$(PREFIX)|; s|@LIBDIR@|$(LIBDIR)|; s|@INCLUDEDIR@|$(INCLUDEDIR)|; s|@DATADIR@|$(DATADIR)|' \
	  -e 's|@VERSION@|$(BP_VERSION)|; s|@LIBS_PRIVATE@|$(strip $(2))|' src/$(1).pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/$(1).pc

# The CLI, the libraries with their soname links, the public headers,
# blueprint.pc and blueprint-service.pc, and the default blueprints.
install: build/blueprint $(LIBS)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR) \
	  $(DESTDIR)$(DATADIR)/blueprint/blueprints
	install -m 755 build/blueprint $(DESTDIR)$(BINDIR)/
	for lib in libblueprint libblueprint-service; do \
	  install -m 644 build/$$lib.a $(DESTDIR)$(LIBDIR)/ && \
	  install -m 755 build/$$lib.so.$(BP_VERSION) $(DESTDIR)$(LIBDIR)/ && \
	  ln -sf $$lib.so.$(BP_VERSION) $(DESTDIR)$(LIBDIR)/$$lib.so.$(BP_SOVERSION) && \
	  ln -sf $$lib.so.$(BP_SOVERSION) $(DESTDIR)$(LIBDIR)/$$lib.so || exit 1; \
	done
	install -m 644 $(PUBLIC_HDRS) $(DESTDIR)$(INCLUDEDIR)/
	$(call pc_file,blueprint,$(CORE_SO_LIBS))
	$(call pc_file,blueprint-service,$(NET_SO_LIBS))
	cp -R blueprints/. $(DESTDIR)$(DATADIR)/blueprint/blueprints/
	install -d $(DESTDIR)$(DATADIR)/blueprint/console
	cp -R console/. $(DESTDIR)$(DATADIR)/blueprint/console/

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/blueprint $(DESTDIR)$(BINDIR)/blueprint-net
	for lib in libblueprint libblueprint-service; do \
	  rm -f $(DESTDIR)$(LIBDIR)/$$lib.a $(DESTDIR)$(LIBDIR)/$$lib.so $(DESTDIR)$(LIBDIR)/$$lib.so.$(BP_SOVERSION) \
	    $(DESTDIR)$(LIBDIR)/$$lib.so.$(BP_VERSION); \
	done
	rm -f $(DESTDIR)$(LIBDIR)/pkgconfig/blueprint.pc $(DESTDIR)$(LIBDIR)/pkgconfig/blueprint-service.pc \
	  $(PUBLIC_HDRS:include/%=$(DESTDIR)$(INCLUDEDIR)/%)
	rm -rf $(DESTDIR)$(DATADIR)/blueprint

# The CLI: the mapping core, static Lua; libblueprint-service on demand (cli.c).
build/blueprint: build/obj/cli-light.o $(CORE_OBJS) | build/libblueprint-service.so
	$(CC) $(CFLAGS) -o $@ $^ $(LUA_LIBS) $(shell pkg-config --libs yaml-0.1) -lpthread -lm

build/lua/blueprint_core.so: src/lua_module.c build/libblueprint.a $(HDRS) | build/lua
	$(CC) $(CFLAGS) -shared -o $@ src/lua_module.c build/libblueprint.a $(shell pkg-config --libs yaml-0.1) -lpthread -ldl -lm

# The local ActiveCampaign emulator used by the integration tests.
build/ac-emulator: tests/emulator/emulator.c tests/emulator/crm.c tests/emulator/ecom.c tests/emulator/bulk.c tests/emulator/emulator.h build/libblueprint.a $(HDRS)
	$(CC) $(CFLAGS) -Isrc -o $@ $(filter %.c,$^) build/libblueprint.a $(shell pkg-config --libs libmicrohttpd libcrypto) -lpthread -lm

# A 3-broker Kafka cluster in one process (librdkafka's mock) for the cluster specs.
build/kafka-mock-cluster: tests/kafka/mock-cluster.c | build/obj
	$(CC) $(CFLAGS) -o $@ $< $(shell pkg-config --libs rdkafka)

# In-process mapping benchmark (make bench).
build/bench-map: scripts/bench/bench_map.c build/libblueprint.a $(HDRS)
	$(CC) $(CFLAGS) -Isrc -o $@ $< build/libblueprint.a $(LUA_LIBS) $(shell pkg-config --libs yaml-0.1) -lpthread -lm

# The transport alone (make bench): libcurl as deliver uses it, no mapping or store.
build/bench-transport: scripts/bench/bench_transport.c build/libblueprint-service.a build/libblueprint.a $(HDRS)
	$(CC) $(CFLAGS) -Isrc -o $@ $< build/libblueprint-service.a build/libblueprint.a $(LDLIBS)

# The sanitizer build: the CLI and the C unit tests with ASan + UBSan.
build/asan/blueprint: $(CORE_SRC) src/cli.c $(HDRS) | build/asan
	$(CC) $(filter-out -O2,$(CFLAGS)) $(SANFLAGS) -o $@ $(CORE_SRC) src/cli.c $(LDLIBS)

build/asan/unit_tests: $(CORE_SRC) tests/c/unit_tests.c tests/c/check.h $(HDRS) | build/asan
	$(CC) $(filter-out -O2,$(CFLAGS)) $(SANFLAGS) -Isrc -o $@ $(CORE_SRC) tests/c/unit_tests.c $(LDLIBS)

asan: build/asan/blueprint build/asan/unit_tests

# Fuzzing with libFuzzer (clang): one harness per parser or boundary that
# takes untrusted input (tests/fuzz/).  `make fuzz` runs each for
# FUZZ_SECONDS; `make test` replays the committed corpora and runs each a
# few seconds, all under ASan/UBSan.
FUZZERS := json config reader engine jwt pattern bodies
FUZZ_SECONDS ?= 60
FUZZFLAGS := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -DBP_REPO='"$(CURDIR)"'
build/fuzz:
	mkdir -p $@

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(CORE_SRC) $(HDRS) | build/fuzz
	clang -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror $(shell pkg-config --cflags $(PKGS)) $(FUZZFLAGS) -Iinclude -Isrc \
	  -o $@ $< $(CORE_SRC) $(LUA_LIBS) $(shell pkg-config --libs yaml-0.1 libcurl sqlite3 libmicrohttpd libcrypto rdkafka) -lpthread -lm

fuzzers: $(FUZZERS:%=build/fuzz/fuzz_%)

fuzz: deps fuzz-deps
	@$(MAKE) --no-print-directory fuzzers
	@for f in $(FUZZERS); do mkdir -p build/fuzz/corpus-$$f; \
	  echo "== fuzz_$$f for $(FUZZ_SECONDS) s"; \
	  build/fuzz/fuzz_$$f -max_total_time=$(FUZZ_SECONDS) -timeout=10 -artifact_prefix=build/fuzz/$$f- \
	    build/fuzz/corpus-$$f tests/fuzz/corpus/$$f || exit 1; done

# The ThreadSanitizer build: the full CLI, for the serve specs (delivery
# loops, HTTP threads, the registry and the store share data across threads).
TSANFLAGS := -O1 -g -fsanitize=thread -fno-omit-frame-pointer
build/tsan:
	mkdir -p $@

build/tsan/blueprint: $(CORE_SRC) src/cli.c $(HDRS) | build/tsan
	$(CC) $(filter-out -O2,$(CFLAGS)) $(TSANFLAGS) -o $@ $(CORE_SRC) src/cli.c $(LDLIBS)

tsan: build/tsan/blueprint

test: deps fuzz-deps
	@$(MAKE) --no-print-directory all asan tsan fuzzers
	@scripts/run-tests.sh

run: deps
	@$(MAKE) --no-print-directory all
	@scripts/run.sh

# One-shot tour without a server: dry-run the examples, then deliver them to
# the emulator (or to BLUEPRINT_CONFIG's account) with `blueprint deliver`.
demo: deps
	@$(MAKE) --no-print-directory all
	@scripts/demo.sh

# Benchmarks (not part of `make test`): the alternatives they compare against
# and the load tools come from Debian too.
FUZZ_PKGS := clang libfuzzer-14-dev
fuzz-deps:
	$(call install_missing,$(FUZZ_PKGS))

BENCH_PKGS := wrk time
bench-deps: deps
	$(call install_missing,$(BENCH_PKGS))

bench: bench-deps
	@$(MAKE) --no-print-directory all build/bench-map build/bench-transport
	@scripts/bench.sh

clean:
	rm -rf build

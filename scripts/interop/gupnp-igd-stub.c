/*
 * A stand-in for libgupnp-igd-1.0.so.4 that turns libnice's UPnP port mapping off.
 *
 * Why: on Debian bookworm, libnice (used by GStreamer's webrtcbin, hence by `whip-client`)
 * links libgupnp-igd, which pulls in libsoup 3, while `whip-client` itself links libsoup 2.
 * GLib's type system cannot hold both, so the client aborts at start with
 * "libsoup2 symbols detected. Using libsoup2 and libsoup3 in the same process is not
 * supported." Built with `cc -shared -fPIC` and put first on LD_LIBRARY_PATH, this library
 * satisfies libnice's four imports (`nm -D --undefined-only libnice.so.10 | grep gupnp`)
 * without loading libsoup 3.
 *
 * libnice calls gupnp_simple_igd_thread_new() when a stream starts gathering and, when it
 * gets NULL, logs "Error creating UPnP Simple IGD agent" and skips UPnP altogether
 * (agent/agent.c, nice_agent_gather_candidates), so the other three are never reached; they
 * exist only for the dynamic linker and do nothing. Tests never want UPnP anyway: it would
 * probe the LAN for a router.
 */
#include <stddef.h>

typedef unsigned long GType; /* gsize in GLib */

void *gupnp_simple_igd_thread_new(void) { return NULL; }

GType gupnp_simple_igd_get_type(void) { return 0; /* G_TYPE_INVALID: no instance exists */ }

void gupnp_simple_igd_add_port(void *self, const char *protocol, unsigned int external_port,
                               const char *local_ip, unsigned int local_port,
                               unsigned int lease_duration, const char *description) {
  (void)self; (void)protocol; (void)external_port; (void)local_ip; (void)local_port;
  (void)lease_duration; (void)description;
}

int gupnp_simple_igd_remove_port_local(void *self, const char *protocol, const char *local_ip,
                                       unsigned int local_port) {
  (void)self; (void)protocol; (void)local_ip; (void)local_port;
  return 0;
}

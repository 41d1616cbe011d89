/* Negative control, must FAIL: the LTL claim of convergence.pml without its fairness
 * assumption -- the network may lose every message, forever.  Shows the claim is not
 * vacuous: pan finds a cycle in which a host never catches up. */
#define LIVENESS
#define HOSTS 2
#define DUP_MAX 1
#define CRASH_MAX 1
#include "replication.pml"

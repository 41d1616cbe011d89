/* Eventual convergence under fair delivery (LTL, checked with weak fairness: pan -a -f).
 * Fair delivery is a finite fault budget per host: at most 2 losses, 1 duplicate and
 * 1 crash; after that every message redelivered is delivered.  Claim: every host
 * eventually catches up and stops, and (the assertions of replication.pml) holds the
 * specification's winner, the same as every other host. */
#define LIVENESS
#define HOSTS 2
#define LOSS_MAX 2
#define DUP_MAX 1
#define CRASH_MAX 1
#include "replication.pml"

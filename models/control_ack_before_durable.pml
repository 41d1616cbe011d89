/* Negative control, must FAIL: submit returns (the event is acknowledged) when the record
 * is appended, before the group commit makes it durable.  A crash that tears the tail off
 * loses an acknowledged event. */
#define ACK_BEFORE_DURABLE
#include "replication.pml"

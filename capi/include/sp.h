/* sp.h: for Spread applications moving to ringfence; everything is in
 * ringfence.h (docs/c-api.md lists the differences). */
#include "ringfence.h"

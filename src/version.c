/* The library's version (blueprint.h: BP_VERSION_*). */
#include "blueprint.h"

#define BP_STR2(x) #x
#define BP_STR(x) BP_STR2(x)

const char *bp_version(void)
{
    return BP_STR(BP_VERSION_MAJOR) "." BP_STR(BP_VERSION_MINOR) "." BP_STR(BP_VERSION_PATCH);
}

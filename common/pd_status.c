/* pd_status.c - strings for pd_status_t, generated from the table in pd_status.h. */
#include "pd_status.h"

const char *pd_status_str(pd_status_t status)
{
    switch (status) {
#define PD_STATUS_CASE(name, value, str) case name: return str;
    PD_STATUS_MAP(PD_STATUS_CASE)
#undef PD_STATUS_CASE
    }
    return "unknown status";
}

const char *pd_status_name(pd_status_t status)
{
    switch (status) {
#define PD_STATUS_CASE(name, value, str) case name: return #name;
    PD_STATUS_MAP(PD_STATUS_CASE)
#undef PD_STATUS_CASE
    }
    return "PD_UNKNOWN";
}

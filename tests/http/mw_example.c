/*
 * mw_example.c - an example --middleware library (built by test_net_http at run time):
 *   cc -shared -fPIC -I common -o mw_example.so tests/http/mw_example.c
 *   pdserve-decode ... --middleware ./mw_example.so:pd_mw_example
 *
 * Rejects requests that carry "X-Block: 1" with 403 (its own error JSON) and requests
 * with "X-Teapot" with a bare 418 (the layer writes the error JSON), and tags every
 * other response with "X-Middleware: example".  It uses only the function table it
 * receives as `user`, so it needs no symbols from the server executable.
 */
#include <string.h>

#include "pd_http.h"

int pd_mw_example(pd_http_req_t *req, void *user)
{
    const pd_http_mw_api_t *api = user;
    if (api == NULL || api->version < 1)
        return 500;
    const char *block = api->req_header(req, "X-Block");
    if (block != NULL && strcmp(block, "1") == 0) {
        api->respond_error(req, 403, NULL, "blocked by the example middleware", NULL, "blocked");
        return 403;
    }
    if (api->req_header(req, "X-Teapot") != NULL)
        return 418;
    api->req_add_header(req, "X-Middleware", "example");
    return 0;
}

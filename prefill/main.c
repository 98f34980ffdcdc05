/* pdserve-prefill - placeholder main until the command-line parser lands. */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--version") == 0) {
            printf("pdserve-prefill %s (%s)\n", PD_VERSION, PD_GIT_REV);
            return 0;
        }
    }
    printf("usage: pdserve-prefill [options]\n");
    return 0;
}

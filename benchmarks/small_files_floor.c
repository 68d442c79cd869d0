/* The per-file work of the exporter's small-file copy, without the interpreter.
 *
 * small_files_floor DEST [nohash|lines] < sources
 *
 * Copies each source (NUL-separated paths on stdin) into the folder DEST under
 * its base name, with the system calls `small_copy.copy_small` makes per file:
 * open, fstat, one pread of one byte more than its size, close, an exclusive
 * create, one write, close, and a stat of the source after; then the SHA-256 of
 * the bytes (OpenSSL's, as Python's hashlib), unless `nohash`. Prints the number
 * of files copied, or with `lines` a line per file as the exporter's helper
 * answers (`size sha256-hex`). benchmarks/small_files_floor.py builds and runs it;
 * minimal_python_export.py runs it as its helpers with `--c-helper`.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BUFFER_BYTES (1024 * 1024) /* small_copy.HELPER_BUFFER_BYTES */

static char *read_all(int fd, size_t *size) {
  size_t cap = 1 << 20, len = 0;
  char *data = malloc(cap);
  ssize_t n;
  while (data && (n = read(fd, data + len, cap - len)) > 0) {
    len += (size_t)n;
    if (len == cap) data = realloc(data, cap *= 2);
  }
  *size = len;
  return data;
}

static int fail(const char *what, const char *path) {
  perror(path);
  fprintf(stderr, "small_files_floor: %s failed\n", what);
  return 1;
}

int main(int argc, char **argv) {
  static unsigned char buffer[BUFFER_BYTES + 1];
  unsigned char digest[SHA256_DIGEST_LENGTH];
  size_t size, copied = 0;
  if (argc < 2) return fprintf(stderr, "usage: small_files_floor DEST [nohash|lines] < sources\n"), 2;
  int hash = !(argc > 2 && strcmp(argv[2], "nohash") == 0);
  int lines = argc > 2 && strcmp(argv[2], "lines") == 0;
  int dest = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  char *sources = read_all(0, &size);
  if (dest < 0) return fail("open", argv[1]);
  if (!sources) return fail("read", "stdin");
  for (char *src = sources; src < sources + size; src += strlen(src) + 1) {
    struct stat before, after;
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0 || fstat(in, &before) != 0) return fail("open", src);
    if (before.st_size >= BUFFER_BYTES) return fail("a file under 1 MiB", src);
    ssize_t n = pread(in, buffer, (size_t)before.st_size + 1, 0);
    close(in);
    if (n != before.st_size) return fail("read", src);
    const char *name = strrchr(src, '/') ? strrchr(src, '/') + 1 : src;
    int out = openat(dest, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (out < 0 || write(out, buffer, (size_t)n) != n) return fail("write", name);
    close(out);
    if (stat(src, &after) != 0 || after.st_mtim.tv_nsec != before.st_mtim.tv_nsec)
      return fail("stat", src);
    if (hash) SHA256(buffer, (size_t)n, digest);
    if (lines) {
      printf("%zd ", n);
      for (int i = 0; i < SHA256_DIGEST_LENGTH; i++) printf("%02x", digest[i]);
      putchar('\n');
    }
    copied++;
  }
  if (!lines) printf("%zu\n", copied);
  return 0;
}

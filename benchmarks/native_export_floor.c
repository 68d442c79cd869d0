/* The least a native export of a local SavedModel folder does: a C program, no interpreter.
 *
 * native_export_floor SOURCE_DIR EXPORT_BASE threads|processes
 *
 * The work of benchmarks/minimal_python_export.py, in C: it lists SOURCE_DIR
 * (sorted) with one lstat per entry, refusing anything but regular files and
 * folders; copies every file into a staging folder under EXPORT_BASE in two
 * workers (two threads of this process, or this process and a forked child),
 * every other file each, with the system calls of the exporter's small-file
 * copy (open, fstat, one pread of one byte more than its size, an exclusive
 * create, one write, and a stat of the source after, which must show the same
 * file, size and mtime) and OpenSSL's SHA-256 of the bytes written; writes the
 * manifest (the exporter's JSON layout of path, sha256 and size per file);
 * checks that the staging folder holds exactly the planned files and the
 * manifest; flushes the filesystem (syncfs) and renames the folder to `1/`.
 * No request, blessing, lineage, lock or error messages beyond one line.
 * benchmarks/small_files_floor.py builds and runs it beside `cp -r`.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define WORKERS 2
#define MANIFEST "assets.extra/export_manifest.json"

typedef struct {
  off_t size;
  char sha256[65];
  int failed;
} result_t;

typedef struct {
  char *src, *rel;
  result_t *result; /* In shared memory: a forked worker reports through it. */
} item_t;

static item_t *items;
static size_t n_items, cap_items;
static const char *staging;

static int die(const char *what, const char *path) {
  fprintf(stderr, "native_export_floor: %s %s: %s\n", what, path, strerror(errno));
  exit(1);
}

static int by_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *joined(const char *a, const char *sep, const char *b) {
  char *out = malloc(strlen(a) + strlen(sep) + strlen(b) + 1);
  return strcat(strcat(strcpy(out, a), sep), b);
}

static void plan(const char *dir, const char *rel) {
  DIR *d = opendir(dir);
  if (!d) die("cannot list", dir);
  char **names = NULL;
  size_t n = 0, cap = 0;
  for (struct dirent *e; (e = readdir(d));) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    if (n == cap) names = realloc(names, (cap = cap ? 2 * cap : 256) * sizeof *names);
    names[n++] = strdup(e->d_name);
  }
  qsort(names, n, sizeof *names, by_name);
  for (size_t i = 0; i < n; i++) {
    struct stat st;
    char *path = joined(dir, "/", names[i]), *r = joined(rel, "", names[i]);
    if (fstatat(dirfd(d), names[i], &st, AT_SYMLINK_NOFOLLOW)) die("cannot stat", path);
    if (S_ISDIR(st.st_mode)) {
      char *sub = joined(r, "/", "");
      plan(path, sub);
      free(path), free(r), free(sub);
    } else if (S_ISREG(st.st_mode)) {
      if (n_items == cap_items)
        items = realloc(items, (cap_items = cap_items ? 2 * cap_items : 1024) * sizeof *items);
      items[n_items++] = (item_t){path, r, NULL};
    } else {
      errno = EINVAL;
      die("not a regular file or folder:", path);
    }
    free(names[i]);
  }
  free(names);
  closedir(d);
}

static void make_folders(void) {
  const char *last = NULL;
  int last_len = -1;
  for (size_t i = 0; i < n_items; i++) {
    const char *slash = strrchr(items[i].rel, '/');
    int len = slash ? (int)(slash - items[i].rel) : -1;
    if (len < 0 || (last && len == last_len && !strncmp(last, items[i].rel, len))) continue;
    last = items[i].rel, last_len = len;
    char path[4096];
    snprintf(path, sizeof path, "%s/%.*s", staging, len, items[i].rel);
    for (char *p = path + strlen(staging) + 1; *p; p++)
      if (*p == '/') *p = 0, mkdir(path, 0777), *p = '/';
    mkdir(path, 0777);
  }
}

static void copy_one(const item_t *item, char **buf, size_t *cap) {
  result_t *out = item->result;
  int fd = open(item->src, O_RDONLY | O_CLOEXEC);
  struct stat before, after;
  if (fd < 0 || fstat(fd, &before)) goto failed;
  size_t want = (size_t)before.st_size + 1;
  if (want > *cap) *buf = realloc(*buf, *cap = want);
  ssize_t n = 0, got;
  while ((size_t)n < want && (got = pread(fd, *buf + n, want - n, n)) > 0) n += got;
  close(fd);
  if (n != before.st_size) goto failed;
  char dest[4096];
  snprintf(dest, sizeof dest, "%s/%s", staging, item->rel);
  int w = open(dest, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (w < 0) goto failed;
  for (ssize_t done = 0; done < n; done += got)
    if ((got = write(w, *buf + done, n - done)) < 0) goto failed;
  close(w);
  if (stat(item->src, &after) || after.st_ino != before.st_ino ||
      after.st_size != before.st_size || after.st_mtim.tv_sec != before.st_mtim.tv_sec ||
      after.st_mtim.tv_nsec != before.st_mtim.tv_nsec)
    goto failed;
  unsigned char md[32];
  SHA256((const unsigned char *)*buf, n, md);
  for (int i = 0; i < 32; i++) sprintf(out->sha256 + 2 * i, "%02x", md[i]);
  out->size = n;
  return;
failed:
  out->failed = errno ? errno : -1;
}

static void *worker(void *arg) {
  char *buf = NULL;
  size_t cap = 0;
  for (size_t i = (size_t)arg; i < n_items; i += WORKERS) copy_one(&items[i], &buf, &cap);
  free(buf);
  return NULL;
}

static void copy_all(int processes) {
  result_t *results = mmap(NULL, n_items * sizeof *results, PROT_READ | PROT_WRITE,
                           MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (results == MAP_FAILED) die("cannot map", "results");
  for (size_t i = 0; i < n_items; i++) items[i].result = &results[i];
  if (processes) {
    pid_t child = fork();
    if (child == 0) worker((void *)1), _exit(0);
    worker((void *)0);
    waitpid(child, NULL, 0);
  } else {
    pthread_t thread;
    pthread_create(&thread, NULL, worker, (void *)1);
    worker((void *)0);
    pthread_join(thread, NULL);
  }
  for (size_t i = 0; i < n_items; i++)
    if (results[i].failed) errno = results[i].failed, die("cannot copy", items[i].src);
}

static void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fputc('\\', f), fputc(c, f);
    else if (c < 0x20) fprintf(f, "\\u%04x", c);
    else fputc(c, f);
  }
  fputc('"', f);
}

static void write_manifest(void) {
  char path[4096];
  snprintf(path, sizeof path, "%s/assets.extra", staging);
  mkdir(path, 0777);
  snprintf(path, sizeof path, "%s/%s", staging, MANIFEST);
  FILE *f = fopen(path, "wx");
  if (!f) die("cannot create", path);
  fputs("{\n  \"files\": [\n", f);
  for (size_t i = 0; i < n_items; i++) {
    fputs("    {\n      \"path\": ", f);
    json_string(f, items[i].rel);
    fprintf(f, ",\n      \"sha256\": \"%s\",\n      \"size\": %lld\n    }%s\n",
            items[i].result->sha256, (long long)items[i].result->size,
            i + 1 < n_items ? "," : "");
  }
  fputs("  ]\n}\n", f);
  if (fclose(f)) die("cannot write", path);
}

static size_t count_files(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) die("cannot list", dir);
  size_t n = 0;
  for (struct dirent *e; (e = readdir(d));) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    if (e->d_type == DT_DIR) {
      char *sub = joined(dir, "/", e->d_name);
      n += count_files(sub);
      free(sub);
    } else {
      n++;
    }
  }
  closedir(d);
  return n;
}

int main(int argc, char **argv) {
  if (argc != 4 || (strcmp(argv[3], "threads") && strcmp(argv[3], "processes"))) {
    fprintf(stderr, "usage: native_export_floor SOURCE_DIR EXPORT_BASE threads|processes\n");
    return 2;
  }
  mkdir(argv[2], 0777);
  char *stage = joined(argv[2], "/", ".staging");
  if (mkdir(stage, 0777)) die("cannot create", stage);
  staging = stage;
  plan(argv[1], "");
  make_folders();
  copy_all(!strcmp(argv[3], "processes"));
  write_manifest();
  if (count_files(staging) != n_items + 1) {
    fprintf(stderr, "native_export_floor: the staging folder differs from its manifest\n");
    return 1;
  }
  int fd = open(staging, O_RDONLY | O_DIRECTORY);
  if (fd < 0 || syncfs(fd)) die("cannot flush", staging);
  close(fd);
  char *final = joined(argv[2], "/", "1");
  if (rename(staging, final)) die("cannot rename", staging);
  return 0;
}

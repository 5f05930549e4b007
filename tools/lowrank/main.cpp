#include <cstdio>
int main(int argc, char** argv) { std::puts("lowrank"); return 0; }

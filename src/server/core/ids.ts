/** A pool of small integer ids [first, end): allocation and release. */
export class IdPool {
  private readonly free: number[] = [];
  private next: number;

  constructor(
    private readonly first: number,
    private readonly end: number,
  ) {
    this.next = first;
  }

  get available(): number {
    return this.free.length + (this.end - this.next);
  }

  alloc(): number {
    const id = this.free.pop() ?? (this.next < this.end ? this.next++ : undefined);
    if (id === undefined) throw new RangeError('id pool exhausted');
    return id;
  }

  release(id: number): void {
    if (id >= this.first && id < this.end) this.free.push(id);
  }

  /** Mark an id as used (adopting kernel state). */
  take(id: number): void {
    const i = this.free.indexOf(id);
    if (i >= 0) this.free.splice(i, 1);
    else
      while (this.next <= id && this.next < this.end) {
        if (this.next !== id) this.free.push(this.next);
        this.next++;
      }
  }
}

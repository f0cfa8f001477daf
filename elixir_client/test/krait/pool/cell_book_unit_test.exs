defmodule Krait.Pool.CellBookUnitTest do
  # Krait.Pool.CellBook as plain data: no atomics, no processes.
  use ExUnit.Case, async: true

  alias Krait.Pool.CellBook

  test "a new book has every cell free and no owner" do
    book = CellBook.new(3)
    assert book.free == [1, 2, 3]
    assert CellBook.owner(book, 1) == nil
  end

  test "assign hands out free cells in order, each with a new publication number" do
    {:ok, {1, 1}, book} = CellBook.assign(CellBook.new(2), "w1")
    {:ok, {2, 2}, book} = CellBook.assign(book, "w2")
    assert CellBook.owner(book, 1) == "w1"
    assert CellBook.owner(book, 2) == "w2"
    assert CellBook.assign(book, "w3") == :full
  end

  test "a released cell is reused under a publication number never seen before" do
    {:ok, {1, 1}, book} = CellBook.assign(CellBook.new(1), "w1")
    book = CellBook.release(book, 1)
    assert CellBook.owner(book, 1) == nil
    {:ok, {1, 2}, book} = CellBook.assign(book, "w2")
    assert CellBook.owner(book, 1) == "w2"
  end

  test "releasing a cell not in use changes nothing (a cell is never free twice)" do
    {:ok, _, book} = CellBook.assign(CellBook.new(2), "w1")
    assert CellBook.release(book, 2) == book
    book = CellBook.release(book, 1)
    assert CellBook.release(book, 1) == book
    assert Enum.sort(book.free) == [1, 2]
  end
end
